"""Admission for one model's queue: refuse work that would still be waiting at its deadline.

The batcher owns the queue (the mechanism); this owns the policy: the measured drain rate (wall
seconds per real token), the predicted wait of the work ahead, the 429 decision and Retry-After.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from service.errors import ErrorKind, ServiceError

# A request is refused (429) when the predicted wait passes this share of its remaining deadline:
# the prediction is an average, the request's own run comes after the wait, and an event loop
# busy with parsing and tokenising other requests delays its answer further (0.8 still let
# 12 of 988 requests time out in loadtests/reliability.py's overload run; 0.5 none).
ADMISSION_MARGIN = 0.5


def refuse_if_late(
    name: str,
    predicted_s: float | None,
    timeout_s: float,
    *,
    cold_overflow: bool,
    retry_after: Callable[[], int],
    what: str,
) -> None:
    """The 429 decision both the batcher and the decoding scheduler take: refuse when `what`
    would likely take past ADMISSION_MARGIN of the deadline (`predicted_s`), or, before anything
    was measured (`predicted_s` None), when the caller's cold-start budget overflowed."""
    if predicted_s is None:
        if cold_overflow:
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"model {name!r} is warming up under load; retry later",
                retry_after=1,
            )
    elif predicted_s > timeout_s * ADMISSION_MARGIN:
        raise ServiceError(
            ErrorKind.OVERLOADED,
            f"model {name!r} is overloaded: {what} would take about {predicted_s:.1f} s, "
            "past this request's deadline; retry later",
            retry_after=retry_after(),
        )


def whole_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, 1 to 60."""
    return max(1, min(60, math.ceil(round(seconds, 3))))  # round: 2.0000001 s is 2 s


class Admission:
    def __init__(self, name: str, max_batch_tokens: int, slots: int) -> None:
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.slots = slots  # engine runs in flight at once
        # Moving average of the wall seconds it takes to drain one real token; None until the
        # first run was measured.
        self.seconds_per_token: float | None = None
        self._last_done: float | None = None  # when the last run finished...
        self._backlog_at_last_done = False  # ...and whether work was waiting then

    def check(self, tokens_ahead: int, tokens: int, timeout_s: float) -> None:
        """Refuse (OVERLOADED) work that would likely still be queued at its deadline. Before
        any run was measured there is no throughput to predict from: then at most one full batch
        per slot is taken in, so a burst on a cold server cannot queue work that times out."""
        budget = self.max_batch_tokens * self.slots
        refuse_if_late(
            self.name,
            self.predicted_wait_s(tokens_ahead + tokens),
            timeout_s,
            cold_overflow=bool(tokens_ahead) and tokens_ahead + tokens > budget,
            retry_after=lambda: whole_seconds(self.predicted_wait_s(tokens_ahead) or 0.0),
            what="the queued work",
        )

    def predicted_wait_s(self, tokens: int) -> float | None:
        """Seconds until `tokens` of queued and running work are likely done: the tokens over
        the measured drain rate (None before the first run)."""
        if self.seconds_per_token is None:
            return None
        return tokens * self.seconds_per_token

    def retry_after_s(self, tokens_ahead: int, items_ahead: int) -> int:
        """Whole seconds until the work already accepted has likely drained (Retry-After)."""
        predicted = self.predicted_wait_s(tokens_ahead)
        if predicted is None:  # nothing measured yet: a guess from the item count
            predicted = items_ahead * 0.01 / self.slots
        return whole_seconds(predicted)

    def observe_run(self, now: float, run_seconds: float, tokens: int, backlog: bool) -> None:
        """Update the drain rate after a run of `tokens` real tokens; `backlog`: work is waiting.

        While work is waiting, the time since the previous run finished is what this run's
        tokens cost: it includes the engine, the gaps between runs (an event loop busy with
        other requests) and, with several slots, their overlap. With nothing waiting that
        interval holds idle time, so the run's own time counts, shared over the slots."""
        if self._last_done is not None and self._backlog_at_last_done:
            per_token = (now - self._last_done) / tokens
        else:
            per_token = run_seconds / tokens / self.slots
        previous = self.seconds_per_token
        if previous is None:
            self.seconds_per_token = per_token
        else:  # up fast, down slowly: an optimistic estimate admits work that then times out
            weight = 0.5 if per_token > previous else 0.1
            self.seconds_per_token = (1 - weight) * previous + weight * per_token
        self._last_done = now
        self._backlog_at_last_done = backlog
