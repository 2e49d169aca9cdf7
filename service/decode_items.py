"""What the step scheduler (service/decode_scheduler.py) holds and reports: one sequence's
`DecodeItem`, a step's `StepStats`, and the interfaces of its observer and its engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from service.engines.decode_io import Join, Outcome


@dataclass(eq=False)
class DecodeItem:
    """One sequence (one text of a request) through the scheduler; await `future`."""

    seq_id: int
    src_ids: list[int]
    beam_size: int
    max_steps: int  # decode steps it may take (max_new_tokens capped by the positional table)
    future: asyncio.Future[Any]
    enqueued_at: float
    deadline: float
    on_token: Callable[[int], None] | None = None  # greedy: called with every new token
    batch_size: int = 0  # rows of the step it joined, for the request log
    joined_at: float | None = None  # when it joined the running batch (clock), for traces
    # a stream's encoder run, started when it arrived (DecodeScheduler `encode_streams_early`)
    encoding: Future[Sequence[Any]] | None = None

    @property
    def tokens(self) -> int:
        return len(self.src_ids)

    def as_join(self) -> Join:
        """What the engine needs of it to join the running batch."""
        return Join(self.seq_id, self.src_ids, self.beam_size, self.max_steps)


@dataclass(frozen=True)
class StepStats:
    """One scheduler step, as the observer sees it."""

    rows: int  # decoder rows that ran
    sequences: int  # sequences that ran
    joined: int
    finished: int
    cache_tokens: int  # padded positions the caches held during the step
    seconds: float


class DecodeObserver(Protocol):
    def on_step(self, stats: StepStats) -> None: ...

    def on_dropped(self, reason: str, count: int) -> None:
        """Sequences that left unanswered: "cancelled", "timeout" or "shutdown"."""
        ...


class StepEngine(Protocol):
    """The mechanism (`DecodeBatch`): `step` and `reset` on the scheduler's thread, `encode` on
    the encoder's (it returns runs with `without(seq_ids)`: `EncodedRun`)."""

    @property
    def rows(self) -> int: ...

    def step(
        self, joins: list[Join], leaves: list[int], encoded: Sequence[Any] = ()
    ) -> list[Outcome]: ...

    def encode(self, joins: list[Join]) -> Sequence[Any]: ...

    def reset(self) -> None: ...


class NullObserver:
    def on_step(self, stats: StepStats) -> None:
        pass

    def on_dropped(self, reason: str, count: int) -> None:
        pass
