"""Shedding before parsing: a cap on inference requests in flight, checked in the request
middleware before the body is read.

Per-model admission (service/admission.py) predicts a model queue's drain time, but it runs after
the body was parsed, validated and tokenised. Far enough past the server's capacity that work is
what saturates the core, and requests then wait in the event loop to be parsed, a backlog
admission never sees. This gate counts the inference requests that entered the app and have not
been answered, and answers 429 at once, for the cost of reading the request line and headers,
once that count passes what the server answers within a whole deadline at its measured rate:
requests past that many would time out even if nothing else arrived. It is a backstop: below it,
the models' admission (half a deadline, per model, counted in tokens) decides. At 4x and 10x
capacity (reports/reliability.md) the models' admission alone already kept the drain under
0.6 s; the cap made no difference a single run could separate from noise.
"""

from __future__ import annotations

import math
from collections import deque

from service.admission import whole_seconds

# Inference routes: what the gate counts. Model control, metadata, health and metrics stay open,
# so an operator can still look at and steer an overloaded server.
_V1_INFERENCE = frozenset({"/v1/classify", "/v1/nli", "/v1/translate"})

# Answers counted over this many recent seconds to measure the answer rate.
RATE_WINDOW_S = 5.0

# The cap never falls below this: below it the measured rate is the offered load, not what the
# server can do, and a burst after a quiet minute must reach the models' own admission (which
# batches it) rather than be refused here.
MIN_IN_FLIGHT = 64


def is_inference(method: str, path: str) -> bool:
    if method != "POST":
        return False
    return path in _V1_INFERENCE or (path.startswith("/v2/models/") and path.endswith("/infer"))


class InFlightGate:
    """Counts inference requests in flight and decides, before parsing, whether one more fits.

    `fixed_limit` (the max_in_flight setting) caps the count outright; 0 derives the cap from the
    measured answer rate: the requests answered within the request deadline, never under
    MIN_IN_FLIGHT."""

    def __init__(self, timeout_s: float, fixed_limit: int = 0) -> None:
        self.timeout_s = timeout_s
        self.fixed_limit = fixed_limit
        self.in_flight = 0
        self._answered: deque[float] = deque()  # when recent successful answers went out

    def limit(self, now: float) -> int:
        if self.fixed_limit:
            return self.fixed_limit
        rate = self.answer_rate(now)
        return max(MIN_IN_FLIGHT, math.floor(rate * self.timeout_s))

    def answer_rate(self, now: float) -> float:
        """Successful answers per second over the last RATE_WINDOW_S."""
        while self._answered and self._answered[0] < now - RATE_WINDOW_S:
            self._answered.popleft()
        return len(self._answered) / RATE_WINDOW_S

    def try_enter(self, now: float) -> int | None:
        """None when admitted (the caller must call `leave` once answered); otherwise the
        Retry-After in whole seconds: the requests in flight over the answer rate."""
        if self.in_flight < self.limit(now):
            self.in_flight += 1
            return None
        rate = self.answer_rate(now)
        wait_s = self.in_flight / rate if rate > 0 else 1.0
        return whole_seconds(wait_s)

    def leave(self, now: float, answered: bool) -> None:
        """`answered`: a successful answer, counted in the rate (errors and refusals are cheap
        and would inflate it)."""
        self.in_flight -= 1
        if answered:
            self._answered.append(now)
