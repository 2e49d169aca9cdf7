"""What the step scheduler (service/decode_scheduler.py) holds and reports: one sequence's
`DecodeItem`, a step's `StepStats`, the interfaces of its observer, its engine and its delivery,
and the check of a request every lane makes on submit (`checked_steps`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from service.decode_policy import DecodePolicy, check_fits
from service.engines.decode_io import Join, Outcome
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams


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
        """Sequences that left unanswered: "cancelled", "timeout", "shutdown" or "lost" (their
        lane's process died, service/decode_process.py)."""
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


# A finished sequence's answer: its value, or the error it ends with.
Answer = tuple[DecodeItem, Any, BaseException | None]


class Delivery(Protocol):
    """Where a scheduler's futures live and how its answers reach them: the event loop's
    (`LoopDelivery`), or a decoding process's pipe to the server (service/decode_worker.py)."""

    def new_future(self) -> asyncio.Future[Any]: ...

    def deliver(self, answers: list[Answer], tokens: list[tuple[DecodeItem, int]]) -> None:
        """Hand over one step's new tokens (to streamed items' `on_token`) and answers (any
        thread; an item whose future is done already, cancelled, is skipped)."""
        ...


class LoopDelivery:
    """Answers and tokens go to the event loop the futures belong to, one wake-up per call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def new_future(self) -> asyncio.Future[Any]:
        return self._loop.create_future()

    def deliver(self, answers: list[Answer], tokens: list[tuple[DecodeItem, int]]) -> None:
        def on_loop() -> None:
            for item, token in tokens:
                if item.on_token is not None:
                    item.on_token(token)
            for item, result, error in answers:
                if item.future.done():
                    continue
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody to answer
            self._loop.call_soon_threadsafe(on_loop)


class NullObserver:
    def on_step(self, stats: StepStats) -> None:
        pass

    def on_dropped(self, reason: str, count: int) -> None:
        pass


def checked_steps(
    policy: DecodePolicy, key: Hashable, lengths: Iterable[int], max_steps: Callable[[int], int]
) -> int:
    """The decode steps a request's sequences (of `lengths` source tokens) may take, `key` its
    `DecodingParams`; refuses a sequence that could never join (`check_fits`)."""
    if not isinstance(key, DecodingParams):
        raise TypeError(f"the decoding parameters are the key, not {key!r}")
    steps = max_steps(key.max_new_tokens)
    for length in lengths:
        check_fits(policy, key.beam_size, length, steps)
    return steps


def new_items(
    first_id: int,
    payloads: Sequence[Encoded],
    key: DecodingParams,
    steps: int,
    new_future: Callable[[], asyncio.Future[Any]],
    now: float,
    timeout_s: float,
    on_token: Callable[[int], None] | None,
) -> list[DecodeItem]:
    """A request's items, one per payload, numbered from `first_id`, queued `now` and due
    `timeout_s` later (every kind of lane builds them alike)."""
    return [
        DecodeItem(
            first_id + i,
            list(payload.ids),
            key.beam_size,
            steps,
            new_future(),
            now,
            now + timeout_s,
            on_token,
        )
        for i, payload in enumerate(payloads)
    ]


def departed(items: Iterable[DecodeItem], now: float) -> tuple[list[DecodeItem], list[DecodeItem]]:
    """The sequences among `items` whose client went away or whose deadline passed by `now`, and
    those of them whose deadline passed."""
    dead: list[DecodeItem] = []
    expired: list[DecodeItem] = []
    for item in items:
        if item.future.done():  # the client left (read across threads: at worst a step late)
            dead.append(item)
        elif now >= item.deadline:
            dead.append(item)
            expired.append(item)
    return dead, expired
