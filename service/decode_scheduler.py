"""Iteration-level (continuous) batching of translation decoding: the step scheduler's policy.

Request-level batching decodes a batch until its longest sentence ends: a short sentence waits
for the longest, and a request that arrives one step after a batch started waits for all of it.
Here (after Orca and vLLM's `Scheduler`) a translator model has one running decode batch, and at
every step boundary:

1. sequences in `running` whose client went away or whose deadline passed leave (their rows are
   freed in this step's engine call);
2. sequences in `waiting` join, first come first served, while the budgets allow: decoder rows
   (`max_running_sequences`; a beam-K sequence takes K rows) and cache tokens
   (`max_cache_tokens`, counted the way the padded caches grow: rows x (longest source + most
   decode steps), so memory is bounded before it is used, never discovered by running out);
3. one engine call runs the joiners' encoder (batched among them) and one decoder step for every
   row (`service.engines.decode_batch`, on the model's worker thread, off the event loop);
4. sequences that finished are answered at once; greedy ones hand each new token to their
   listener (streaming) as it comes.

Budgets, queue limits (429 with Retry-After from the measured throughput), deadlines (504) and
cancellation work as in `service.batcher`, whose `submit` interface this class shares, so the
inference path and the Open Inference Protocol use it unchanged. Metrics observe it from outside
(`DecodeObserver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.batcher import Clock, LoopClock
from service.engines.decode_batch import Join, Outcome
from service.engines.session import ModelWorker
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams, TranslatorEngine
from service.errors import ErrorKind, ServiceError
from service.settings import Settings

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW_STEPS = 256  # steps the Retry-After estimate averages over


@dataclass(frozen=True)
class DecodePolicy:
    max_running_sequences: int = 64  # decoder rows in the running batch (beam-K takes K)
    max_cache_tokens: int = 16384  # rows x (longest source + most decode steps)
    max_queue_size: int = 1024  # waiting sequences; beyond it submit() answers OVERLOADED


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

    @property
    def tokens(self) -> int:
        return len(self.src_ids)


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


class StepRunner(Protocol):
    """The mechanism, on the model's worker thread (`DecodeBatch` behind a `ModelWorker`)."""

    async def step(self, joins: list[Join], leaves: list[int]) -> list[Outcome]: ...

    async def reset(self) -> None: ...


class _NullObserver:
    def on_step(self, stats: StepStats) -> None:
        pass

    def on_dropped(self, reason: str, count: int) -> None:
        pass


def _resolve(item: DecodeItem, result: Any) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _fail(item: DecodeItem, error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)


class DecodeScheduler:
    """One translator model's waiting queue, running set and step loop."""

    def __init__(
        self,
        name: str,
        runner: StepRunner,
        policy: DecodePolicy,
        *,
        finish: Callable[[list[int]], Any],
        max_steps: Callable[[int], int],
        clock: Clock | None = None,
        observer: DecodeObserver | None = None,
    ) -> None:
        """`finish` turns a finished sequence's ids into its answer (detokenizes); `max_steps`
        caps a max_new_tokens to what the decoder can represent."""
        self.name = name
        self.policy = policy
        self._runner = runner
        self._finish = finish
        self._max_steps = max_steps
        self._clock: Clock = clock or LoopClock()
        self._observer: DecodeObserver = observer or _NullObserver()
        self.waiting: deque[DecodeItem] = deque()
        self.running: dict[int, DecodeItem] = {}
        self._next_id = 0
        self._arrival = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW_STEPS)

    # ------------------------------------------------------------------ public API (as Batcher)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def rows(self) -> int:
        return sum(item.beam_size for item in self.running.values())

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._loop(), name=f"decode-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def submit(
        self,
        payloads: Sequence[Encoded],
        tokens: Sequence[int] | None = None,
        *,
        key: DecodingParams,
        timeout_s: float,
        on_token: Callable[[int], None] | None = None,
    ) -> list[DecodeItem]:
        """Queue one request's sequences, all or none; `key` holds the decoding parameters."""
        del tokens  # the source ids give the lengths (kept for Batcher.submit's signature)
        if self._stopping:
            raise ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
        if not self._tasks:
            raise ServiceError(ErrorKind.NOT_READY, f"model {self.name!r} is not running")
        steps = self._max_steps(key.max_new_tokens)
        for payload in payloads:
            self._check_fits(key.beam_size, len(payload.ids), steps)
        if len(self.waiting) + len(payloads) > self.policy.max_queue_size:
            self._drop_dead_waiting()
        if len(self.waiting) + len(payloads) > self.policy.max_queue_size:
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"model {self.name!r} is overloaded: {len(self.waiting)} sequences waiting, "
                f"max_queue_size is {self.policy.max_queue_size}; retry later",
                retry_after=self.retry_after_s(len(payloads)),
            )
        loop = asyncio.get_running_loop()
        now = self._clock.now()
        items = []
        for payload in payloads:
            items.append(
                DecodeItem(
                    self._next_id,
                    list(payload.ids),
                    key.beam_size,
                    steps,
                    loop.create_future(),
                    now,
                    now + timeout_s,
                    on_token,
                )
            )
            self._next_id += 1
        self.waiting.extend(items)
        self._arrival.set()
        return items

    def retry_after_s(self, extra: int = 0) -> int:
        """Seconds until the waiting sequences (plus `extra`) have likely finished, at least 1."""
        seconds = sum(s for s, _ in self._recent)
        finished = sum(n for _, n in self._recent)
        per_second = finished / seconds if seconds > 0 and finished else 1.0
        estimate = (len(self.waiting) + len(self.running) + extra) / per_second
        return max(1, min(60, math.ceil(estimate)))

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new work, let waiting and running sequences finish (up to `timeout_s`), then
        fail whatever is left with SHUTTING_DOWN."""
        self._stopping = True
        self._arrival.set()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except asyncio.TimeoutError:
                logger.warning("model %s: work left after %.1f s; cancelling", self.name, timeout_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_all(ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down"))

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        try:
            while True:
                if not self.waiting and not self.running:
                    if self._stopping:
                        break
                    self._arrival.clear()
                    await self._arrival.wait()
                    continue
                await self.step()
        finally:
            self._fail_all(ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down"))

    async def step(self) -> None:
        """Retire abandoned sequences, admit waiting ones, run one engine step, answer what
        finished."""
        leaves = self._abandoned()
        joins = self._admit()
        if not joins and not self.running:
            if leaves:  # the batch still holds their rows
                await self._runner.step([], leaves)
            return
        rows, sequences, cache_tokens = self.rows, len(self.running), self._cache_tokens()
        started = self._clock.now()
        try:
            outcomes = await self._runner.step(
                [Join(i.seq_id, i.src_ids, i.beam_size, i.max_steps) for i in joins], leaves
            )
        except asyncio.CancelledError:
            raise  # shutdown: the loop's finally answers everyone
        except Exception as error:
            logger.exception("model %s: a decoding step of %d rows failed", self.name, rows)
            for item in self.running.values():
                _fail(item, error)
            self.running.clear()
            await self._runner.reset()
            return
        finished = self._retire(outcomes)
        seconds = self._clock.now() - started
        self._recent.append((seconds, finished))
        self._observer.on_step(
            StepStats(rows, sequences, len(joins), finished, cache_tokens, seconds)
        )

    def _abandoned(self) -> list[int]:
        """Running sequences whose client went away or whose deadline passed: they leave."""
        now = self._clock.now()
        gone: list[int] = []
        cancelled = expired = 0
        for seq_id, item in list(self.running.items()):
            if item.future.done():
                cancelled += 1
            elif now >= item.deadline:
                expired += 1
                _fail(item, ServiceError(ErrorKind.TIMEOUT, "the request timed out while decoding"))
            else:
                continue
            del self.running[seq_id]
            gone.append(seq_id)
        if cancelled:
            self._observer.on_dropped("cancelled", cancelled)
        if expired:
            self._observer.on_dropped("timeout", expired)
        return gone

    def _admit(self) -> list[DecodeItem]:
        """Waiting sequences that join this step: first come first served while the budgets
        allow (the head waits for room rather than letting later ones overtake it)."""
        self._drop_dead_waiting()
        joins: list[DecodeItem] = []
        rows = self.rows
        longest_source = max((i.tokens for i in self.running.values()), default=0)
        most_steps = max((i.max_steps for i in self.running.values()), default=0)
        while self.waiting:
            item = self.waiting[0]
            new_rows = rows + item.beam_size
            cache = new_rows * (max(longest_source, item.tokens) + max(most_steps, item.max_steps))
            if new_rows > self.policy.max_running_sequences or cache > self.policy.max_cache_tokens:
                break
            self.waiting.popleft()
            rows, joins = new_rows, [*joins, item]
            longest_source = max(longest_source, item.tokens)
            most_steps = max(most_steps, item.max_steps)
        for item in joins:
            item.batch_size = rows
            self.running[item.seq_id] = item
        return joins

    def _retire(self, outcomes: list[Outcome]) -> int:
        finished = 0
        for outcome in outcomes:
            item = self.running.get(outcome.seq_id)
            if item is None:
                continue
            if outcome.token is not None and item.on_token is not None:
                item.on_token(outcome.token)
            if outcome.result is not None:
                del self.running[outcome.seq_id]
                finished += 1
                try:
                    _resolve(item, self._finish(outcome.result))
                except Exception as error:  # a detokenizer bug answers this request only
                    logger.exception("model %s: finishing a sequence failed", self.name)
                    _fail(item, error)
        return finished

    # ------------------------------------------------------------------ helpers

    def _check_fits(self, beam_size: int, source_tokens: int, steps: int) -> None:
        """A sequence that could never join, even alone, is refused now (not queued forever)."""
        policy = self.policy
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

    def _cache_tokens(self) -> int:
        """Padded positions the running batch's caches may reach (the budgeted quantity)."""
        items = self.running.values()
        if not items:
            return 0
        return self.rows * (max(i.tokens for i in items) + max(i.max_steps for i in items))

    def _drop_dead_waiting(self) -> None:
        now = self._clock.now()
        alive: deque[DecodeItem] = deque()
        cancelled = expired = 0
        for item in self.waiting:
            if item.future.done():
                cancelled += 1
            elif now >= item.deadline:
                expired += 1
                _fail(item, ServiceError(ErrorKind.TIMEOUT, "the request timed out in the queue"))
            else:
                alive.append(item)
        if cancelled or expired:
            self.waiting = alive
        if cancelled:
            self._observer.on_dropped("cancelled", cancelled)
        if expired:
            self._observer.on_dropped("timeout", expired)

    def _fail_all(self, error: ServiceError) -> None:
        left = [*self.waiting, *self.running.values()]
        self.waiting.clear()
        self.running.clear()
        if left:
            self._observer.on_dropped("shutdown", len(left))
        for item in left:
            _fail(item, error)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("model %s: decoding loop crashed", self.name, exc_info=task.exception())


class WorkerStepRunner:
    """A `DecodeBatch` driven on the model's worker thread (`call` = `ModelWorker.call`)."""

    def __init__(self, call: Callable[..., Awaitable[Any]], batch: Any) -> None:
        self._call = call
        self._batch = batch

    async def step(self, joins: list[Join], leaves: list[int]) -> list[Outcome]:
        outcomes: list[Outcome] = await self._call(self._batch.step, joins, leaves)
        return outcomes

    async def reset(self) -> None:
        await self._call(self._batch.reset)


def decode_scheduler(
    name: str, engine: TranslatorEngine, worker: ModelWorker, settings: Settings, metrics: Any
) -> DecodeScheduler:
    """The scheduler of a served translator, with the service's settings and metrics."""
    policy = DecodePolicy(
        max_running_sequences=settings.decode_max_running_sequences,
        max_cache_tokens=settings.decode_max_cache_tokens,
        max_queue_size=settings.max_queue_size,
    )
    return DecodeScheduler(
        name,
        WorkerStepRunner(worker.call, engine.decode_batch()),
        policy,
        finish=engine.finish,
        max_steps=engine.generator.max_steps,
        observer=metrics.decode_observer(name),
    )
