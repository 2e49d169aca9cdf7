"""The translator's step scheduling rules, apart from the thread and queues that apply them
(service/decode_scheduler.py), the way service/batch_policy.py and service/admission.py stand
beside the batcher:

- `DecodePolicy`: the running batch's budgets, decoder rows and cache tokens;
- `check_fits`: a sequence that could never join, even alone, is refused at once;
- `joining`: how many waiting sequences join at a step boundary, first come first served;
- `held_back`: whether a busy batch lets them gather for one encoder run a little longer;
- `cache_tokens`: the padded cache positions a running batch may reach (what is budgeted);
- `DecodeAdmission`: the measured rate at which rows free up, the wait it predicts for a
  sequence to get a place, the 429 decision and Retry-After.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from service.admission import refuse_if_late, whole_seconds
from service.errors import ErrorKind, ServiceError

THROUGHPUT_WINDOW_STEPS = 256  # steps the admission and Retry-After estimates average over
# `held_back`: a batch of at least this many rows is busy enough to gather its joiners (below it
# every joiner joins at once: the cores have time to spare), for at most this many steps.
JOIN_GROUP_BUSY_ROWS = 8
JOIN_GROUP_MAX_HELD_STEPS = 3


@dataclass(frozen=True)
class DecodePolicy:
    max_running_sequences: int = 64  # decoder rows in the running batch (beam-K takes K)
    max_cache_tokens: int = 16384  # rows x (longest source + most decode steps)
    max_queue_size: int = 1024  # waiting sequences; beyond it submit() answers OVERLOADED
    join_group: int = 4  # joiners a busy batch gathers for one encoder run (`held_back`; 1: none)


class Budgeted(Protocol):
    """What the budgets read of a sequence."""

    @property
    def beam_size(self) -> int: ...  # decoder rows it takes

    @property
    def tokens(self) -> int: ...  # source tokens

    @property
    def max_steps(self) -> int: ...  # decode steps it may take


def check_fits(policy: DecodePolicy, beam_size: int, source_tokens: int, steps: int) -> None:
    """Refuse a sequence that could never join, even alone (rather than queue it forever)."""
    if beam_size > policy.max_running_sequences:
        raise ServiceError(
            ErrorKind.VALIDATION,
            f"beam_size {beam_size} exceeds the decoder's max_running_sequences "
            f"({policy.max_running_sequences})",
        )
    if beam_size * (source_tokens + steps) > policy.max_cache_tokens:
        raise ServiceError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"beam_size x (source tokens + max_new_tokens) = {beam_size} x "
            f"({source_tokens} + {steps}) exceeds max_cache_tokens "
            f"({policy.max_cache_tokens}); lower beam_size or max_new_tokens",
        )


def refuse_if_full(
    name: str, policy: DecodePolicy, waiting: int, count: int, retry_after: Callable[[], int]
) -> None:
    """Refuse (OVERLOADED) `count` more sequences beyond `max_queue_size` waiting ones
    (`retry_after` is only worked out for a refusal)."""
    if waiting + count > policy.max_queue_size:
        raise ServiceError(
            ErrorKind.OVERLOADED,
            f"model {name!r} is overloaded: {waiting} sequences waiting, "
            f"max_queue_size is {policy.max_queue_size}; retry later",
            retry_after=retry_after(),
        )


def joining(
    waiting: Iterable[Budgeted], running: Collection[Budgeted], rows: int, policy: DecodePolicy
) -> int:
    """How many sequences at the head of `waiting` join a running batch of `rows` rows: first
    come first served while both budgets allow (the head waits for room rather than letting
    later ones overtake it). Caches are counted the way they grow: every row padded to the
    longest source plus the most decode steps."""
    longest_source = max((s.tokens for s in running), default=0)
    most_steps = max((s.max_steps for s in running), default=0)
    count = 0
    for s in waiting:
        rows += s.beam_size
        longest_source = max(longest_source, s.tokens)
        most_steps = max(most_steps, s.max_steps)
        if (
            rows > policy.max_running_sequences
            or rows * (longest_source + most_steps) > policy.max_cache_tokens
        ):
            break
        count += 1
    return count


def held_back(
    policy: DecodePolicy, joiners: int, rows: int, held_steps: int, streamed: bool
) -> bool:
    """Whether the `joiners` that may join a running batch of `rows` rows wait for more, their
    encoder to run once for the group: while they are fewer than `policy.join_group`, the batch
    is busy (JOIN_GROUP_BUSY_ROWS), none of them streams (its client waits for the first piece)
    and the head has been held back fewer than JOIN_GROUP_MAX_HELD_STEPS steps.

    The encoder's cost per source falls with the sources per run, more than a batch's shape
    suggests: after a decoder step its weights are cold in the cache (real translator, one lane
    of 14 rows, no HTTP: 0.93-0.98 ms of encoder per request joining as they come, 0.80-0.84 in
    pairs, 0.72 in fours; 32 users over HTTP, eight alternated rounds: median 462 vs 440
    requests/s, a small gain inside this VM's noise; reports/translation-benchmark.md, stop 30)."""
    return (
        0 < joiners < policy.join_group
        and rows >= JOIN_GROUP_BUSY_ROWS
        and held_steps < JOIN_GROUP_MAX_HELD_STEPS
        and not streamed
    )


def cache_tokens(rows: int, running: Collection[Budgeted]) -> int:
    """Padded positions the running batch's caches may reach (the budgeted quantity)."""
    if not running:
        return 0
    return rows * (max(s.tokens for s in running) + max(s.max_steps for s in running))


class DecodeAdmission:
    """Refuses sequences that would likely still wait for a place in the running batch at their
    deadline, from the measured rate at which steps free rows (the batcher's margin, through
    `refuse_if_late`)."""

    def __init__(self, name: str, policy: DecodePolicy) -> None:
        self.name = name
        self.policy = policy
        # (seconds, rows freed) of recent steps, and their running totals: `predicted_wait_s` runs
        # on every submit, so it must not re-sum the window (O(1) per step and per submit)
        self._recent: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW_STEPS)
        self._seconds = 0.0
        self._freed = 0
        self._observed = 0

    def observe_step(self, seconds: float, rows_freed: int) -> None:
        if len(self._recent) == THROUGHPUT_WINDOW_STEPS:
            old_seconds, old_freed = self._recent[0]
            self._seconds -= old_seconds
            self._freed -= old_freed
        self._recent.append((seconds, rows_freed))
        self._seconds += seconds
        self._freed += rows_freed
        self._observed += 1
        if self._observed % THROUGHPUT_WINDOW_STEPS == 0:  # no float drift from the subtractions
            self._seconds = sum(s for s, _ in self._recent)

    def predicted_wait_s(self, rows_ahead: int, running_rows: int) -> float | None:
        """Seconds until `rows_ahead` decoder rows (the waiting ones, then the new ones) would
        have a place: those beyond the free rows, over the measured rate at which rows are
        freed (None before any sequence finished)."""
        seconds, freed = self._seconds, self._freed
        if not freed or seconds <= 0:
            return None
        free = self.policy.max_running_sequences - running_rows
        return max(0, rows_ahead - free) * seconds / freed

    def retry_after_s(self, rows_ahead: int, running_rows: int, sequences: int) -> int:
        """Whole seconds until `rows_ahead` rows likely have a place (`sequences`: how many
        sequences they are, for a guess before anything was measured)."""
        predicted = self.predicted_wait_s(rows_ahead, running_rows)
        if predicted is None:  # nothing measured yet
            predicted = 0.01 * sequences
        return whole_seconds(predicted)

    def check(
        self,
        waiting_rows: int,
        running_rows: int,
        rows: int,
        timeout_s: float,
        retry_after: Callable[[], int],
    ) -> None:
        """Refuse (OVERLOADED) `rows` more rows that would likely still be waiting at their
        deadline. Before any sequence finished there is no rate to predict from: then at most
        one full batch may wait beyond the free rows."""
        room = 2 * self.policy.max_running_sequences - running_rows
        refuse_if_late(
            self.name,
            self.predicted_wait_s(waiting_rows + rows, running_rows),
            timeout_s,
            cold_overflow=bool(waiting_rows) and waiting_rows + rows > room,
            retry_after=retry_after,
            what="the waiting sequences, to get a place,",
        )
