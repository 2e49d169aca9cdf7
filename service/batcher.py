"""Dynamic batching: one queue and one batching loop per model.

A request puts its sequences into the model's queue as `WorkItem`s (all of them or, when the queue
is full, none) and awaits their futures. The loop forms a batch from the head of the queue:

- a batch forms only when one of the model's `max_concurrent_runs` engine slots is free, so items
  that arrive while the engine is busy wait in the queue and ride the next batch together;
- the window opens when the batch's first item arrived and closes `max_queue_delay_s` later
  (0, the CPU default, takes whatever is queued as soon as a slot is free: on a CPU a batch that
  waits for company only delays an engine that had nothing to do);
- the batch closes earlier when it holds `max_batch_size` items, or when the next item would push
  its padded size (items x longest item) over `max_batch_tokens`;
- only items with the head's `key` join (the translator keys by decoding parameters);
- inside the batch items are sorted by length and cut into runs of similar length when that saves
  more padding than a run costs (`split_runs`), started oldest item first (`oldest_first`); each
  run takes a slot of its own, so with several slots the runs of one batch go side by side;
- with `run_alone` (a CPU engine that also has a one-thread session): a batch that is one run,
  with no run in flight and nothing left queued when the last run ended (the server is not under
  load), takes every slot and runs with `run_alone` on all the engine's threads, for the lowest
  latency; under load, runs go side by side with `run_batch`, one thread each.

Those rules (what a batch may hold and how it is cut) are in service/batch_policy.py; this module
is the mechanism that applies them.

Every future is resolved exactly once on every path: result, the engine's exception, timeout,
shutdown. Items whose future is already done (the client gave up) are skipped before they run.
Metrics observe the batcher from outside through `BatchObserver`; time comes from a `Clock`, so
tests drive the loop with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.admission import Admission
from service.batch_policy import BatchPolicy, next_batch, oldest_first, runs_alone
from service.clock import Clock, LoopClock
from service.engines.runs import split_runs
from service.errors import ErrorKind, ServiceError

logger = logging.getLogger(__name__)

P = TypeVar("P")  # what one sequence hands the engine (e.g. its token ids)
R = TypeVar("R")  # what the engine returns for one sequence


@dataclass(eq=False)
class WorkItem(Generic[P, R]):
    payload: P
    tokens: int  # sequence length, for the token budget and length sorting
    key: Hashable  # items only share a batch with items of the same key
    future: asyncio.Future[R]
    enqueued_at: float
    deadline: float
    batch_size: int = 0  # size of the run it went into, for the request log
    run_started: float | None = None  # when that run started, for traces and statistics
    padded_tokens: int = 0  # that run's padded tokens, for the request's trace


@dataclass(frozen=True)
class RunStats:
    """One engine run, as the observer sees it."""

    size: int
    real_tokens: int
    padded_tokens: int
    queue_waits: tuple[float, ...]  # seconds each item waited before its run started
    run_seconds: float
    failed: bool
    alone: bool = False  # ran with `run_alone`, holding every slot


class BatchObserver(Protocol):
    def on_run(self, stats: RunStats) -> None: ...

    def on_dropped(self, reason: str, count: int) -> None:
        """Items that never ran: "cancelled" (client gone), "timeout" or "shutdown"."""
        ...


RunBatch = Callable[[list[Any], Hashable], Awaitable[Sequence[Any]]]


def _resolve(item: WorkItem[Any, Any], result: Any) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _fail(item: WorkItem[Any, Any], error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)


class _NullObserver:
    def on_run(self, stats: RunStats) -> None:
        pass

    def on_dropped(self, reason: str, count: int) -> None:
        pass


class Batcher(Generic[P, R]):
    """One model's queue and batching loop. `start()` inside a running loop, `stop()` to end."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        policy: BatchPolicy,
        *,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
        run_alone: RunBatch | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._run_batch = run_batch
        self._run_alone = run_alone  # a run holding every slot (module docstring)
        self._queued_when_last_run_ended = False  # under load: no run alone
        self._clock: Clock = clock or LoopClock()
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: deque[WorkItem[P, R]] = deque()
        self._arrival = asyncio.Event()
        self._stopping = False
        self._running = 0  # items taken from the queue and not resolved yet
        self._running_tokens = 0  # tokens of the items counted in _running
        self._admission = Admission(name, policy.max_batch_tokens, policy.max_concurrent_runs)
        self._last_run_size, self._regroup_until = 0, 0.0  # the last run's size, + regroup_wait_s
        self._tasks: set[asyncio.Task[None]] = set()  # the batching loop
        self._in_flight: set[asyncio.Task[None]] = set()  # engine runs

    # ------------------------------------------------------------------ public API

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def submit(
        self,
        payloads: Sequence[P],
        tokens: Sequence[int],
        *,
        key: Hashable = None,
        timeout_s: float,
    ) -> list[WorkItem[P, R]]:
        """Queue one request's sequences, all or none; await each item's `future`."""
        if len(payloads) != len(tokens):
            raise ValueError("one token count per payload")
        if self._stopping:
            raise ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
        if not self._tasks:
            raise ServiceError(ErrorKind.NOT_READY, f"model {self.name!r} is not running")
        if len(self._queue) + len(payloads) > self.policy.max_queue_size:
            self._drop_dead()  # cancelled items still in the queue do not count
        if len(self._queue) + len(payloads) > self.policy.max_queue_size:
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"model {self.name!r} is overloaded: {len(self._queue)} sequences queued, "
                f"max_queue_size is {self.policy.max_queue_size}; retry later",
                retry_after=self.retry_after_s(),
            )
        self._admission.check(self._tokens_ahead(), sum(tokens), timeout_s)
        loop = asyncio.get_running_loop()
        now = self._clock.now()
        items = [
            WorkItem(p, t, key, loop.create_future(), now, now + timeout_s)
            for p, t in zip(payloads, tokens, strict=True)
        ]
        self._queue.extend(items)
        self._arrival.set()
        return items

    def predicted_wait_s(self, extra_tokens: int = 0) -> float | None:
        """Seconds until the queued and running work, plus `extra_tokens`, is likely done
        (None before the first run was measured)."""
        return self._admission.predicted_wait_s(self._tokens_ahead() + extra_tokens)

    def retry_after_s(self) -> int:
        """Whole seconds until the work already accepted has likely drained (Retry-After)."""
        return self._admission.retry_after_s(self._tokens_ahead(), len(self._queue) + self._running)

    def _tokens_ahead(self) -> int:
        return sum(item.tokens for item in self._queue) + self._running_tokens

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new work, let queued and running work finish (up to `timeout_s`), then fail
        whatever is left with SHUTTING_DOWN."""
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
        self._fail_queue(ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down"))

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self.policy.max_concurrent_runs)
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        break
                    self._arrival.clear()
                    await self._arrival.wait()
                    continue
                await slots.acquire()  # form a batch only when the engine can take it
                batch = await self._next_batch()
                if batch:
                    await self._dispatch(batch, slots)  # hands the held slot to its first run
                else:
                    slots.release()
            while self._in_flight:  # stopping: let the runs in the engine finish
                await asyncio.wait(set(self._in_flight))
        finally:
            for task in self._in_flight:  # only left when the loop itself was cancelled
                task.cancel()
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            self._fail_queue(ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down"))

    async def _next_batch(self) -> list[WorkItem[P, R]]:
        """Wait until the head's batch is full or its window closed, then take it."""
        while True:
            self._arrival.clear()
            self._drop_dead()
            if not self._queue:
                return []
            head = self._queue[0]
            batch, full = next_batch(self._queue, head.key, self.policy)
            remaining = head.enqueued_at + self.policy.max_queue_delay_s - self._clock.now()
            if not full and len(batch) < self._last_run_size:  # its clients may be coming back
                remaining = max(remaining, self._regroup_until - self._clock.now())
            if full or remaining <= 0 or self._stopping:
                taken = {id(item) for item in batch}
                self._queue = deque(i for i in self._queue if id(i) not in taken)
                return batch
            await self._clock.wait(self._arrival, remaining)

    async def _dispatch(self, batch: list[WorkItem[P, R]], slots: asyncio.Semaphore) -> None:
        """Sort the batch, cut it into runs and start each run in an engine slot. Called holding
        one slot (used by the first run); waits for a slot for each further run."""
        batch.sort(key=lambda item: item.tokens)  # stable: FIFO among equal lengths
        runs = split_runs([item.tokens for item in batch], self.policy.run_overhead_tokens)
        runs = oldest_first(runs, [item.enqueued_at for item in batch])
        self._running += len(batch)
        self._running_tokens += sum(item.tokens for item in batch)
        alone = self._run_alone is not None and runs_alone(
            len(runs), bool(self._in_flight), bool(self._queue), self._queued_when_last_run_ended
        )
        held = self.policy.max_concurrent_runs if alone else 1  # slots the first run holds
        for _ in range(held - 1):
            await slots.acquire()  # free at once: no run is in flight
        started = 0  # runs that got a slot
        try:
            for index, (start, end) in enumerate(runs):
                if index:
                    await slots.acquire()
                started = index + 1
                group = self._alive(batch[start:end])
                if not group:
                    self._release(batch[start:end])
                    for _ in range(held):
                        slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(
                    self._run_in_slot(group, batch[start:end], slots, held, alone)
                )
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        except asyncio.CancelledError:
            # Shutdown while waiting for a slot: the runs not started never will be.
            error = ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
            for start, end in runs[started:]:
                for item in batch[start:end]:
                    _fail(item, error)
                self._release(batch[start:end])
            raise

    async def _run_in_slot(
        self,
        group: list[WorkItem[P, R]],
        taken: Sequence[WorkItem[P, R]],
        slots: asyncio.Semaphore,
        held: int = 1,
        alone: bool = False,
    ) -> None:
        try:
            await self._run_group(group, alone)
        finally:
            self._release(taken)
            for _ in range(held):
                slots.release()

    def _release(self, items: Sequence[WorkItem[P, R]]) -> None:
        """Items taken from the queue that are done (run, failed or skipped)."""
        self._running -= len(items)
        self._running_tokens -= sum(item.tokens for item in items)

    async def _run_group(self, group: list[WorkItem[P, R]], alone: bool = False) -> None:
        started = self._clock.now()
        padded_tokens = len(group) * max(item.tokens for item in group)
        for item in group:
            item.batch_size = len(group)
            item.run_started = started
            item.padded_tokens = padded_tokens
        failed = False
        try:
            run_batch = self._run_alone if alone and self._run_alone else self._run_batch
            results = await run_batch([item.payload for item in group], group[0].key)
            if len(results) != len(group):
                raise RuntimeError(
                    f"engine returned {len(results)} results for a batch of {len(group)}"
                )
        except asyncio.CancelledError:
            for item in group:
                _fail(item, ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down"))
            raise
        except Exception as error:
            failed = True
            logger.exception("model %s: a batch of %d failed", self.name, len(group))
            for item in group:
                _fail(item, error)
        else:
            for item, result in zip(group, results, strict=True):
                _resolve(item, result)
        finally:
            now = self._clock.now()
            seconds = now - started
            self._last_run_size = len(group)
            self._queued_when_last_run_ended = bool(self._queue)
            self._regroup_until = now + self.policy.regroup_wait_s
            lengths = [item.tokens for item in group]
            if not failed and sum(lengths) > 0:
                self._admission.observe_run(now, seconds, sum(lengths), bool(self._queue))
            self._observer.on_run(
                RunStats(
                    size=len(group),
                    real_tokens=sum(lengths),
                    padded_tokens=len(group) * max(lengths),
                    queue_waits=tuple(started - item.enqueued_at for item in group),
                    run_seconds=seconds,
                    failed=failed,
                    alone=alone,
                )
            )

    # ------------------------------------------------------------------ helpers

    def _alive(self, items: Sequence[WorkItem[P, R]]) -> list[WorkItem[P, R]]:
        """Items still worth running; expired ones get TIMEOUT, abandoned ones are dropped."""
        now = self._clock.now()
        alive, cancelled, expired = [], 0, 0
        for item in items:
            if item.future.done():
                cancelled += 1
            elif now >= item.deadline:
                expired += 1
                _fail(item, ServiceError(ErrorKind.TIMEOUT, "the request timed out in the queue"))
            else:
                alive.append(item)
        if cancelled:
            self._observer.on_dropped("cancelled", cancelled)
        if expired:
            self._observer.on_dropped("timeout", expired)
        return alive

    def _drop_dead(self) -> None:
        if any(item.future.done() or self._clock.now() >= item.deadline for item in self._queue):
            self._queue = deque(self._alive(self._queue))

    def _fail_queue(self, error: ServiceError) -> None:
        if self._queue:
            self._observer.on_dropped("shutdown", len(self._queue))
        while self._queue:
            _fail(self._queue.popleft(), error)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("model %s: batching loop crashed", self.name, exc_info=task.exception())
