"""Iteration-level (continuous) batching of translation decoding: the step scheduler.

Request-level batching decodes a batch until its longest sentence ends: a short sentence waits
for the longest, and a request arriving one step after a batch started waits for all of it.
Here (after Orca and vLLM's `Scheduler`) a translator has one running decode batch, and at every
step boundary: (1) sequences whose client left or whose deadline passed leave; (2) waiting ones
join, first come first served, while the budgets allow (decoder rows, a beam-K sequence taking
K, and cache tokens counted as the padded caches grow: service/decode_policy.py); (3) one engine
call runs one decoder step for every row (`service.engines.decode_batch`; joiners may be encoded
beside it, service/decode_encoder.py); (4) finished sequences are answered at once, and greedy
ones hand each new token to their listener (streaming).

The loop runs on its own thread (a hand-off to a worker thread at every step took one-sentence
requests from 10.2-10.4 ms to 11.5-13 ms, demo translator, busy 2-core VM), or in a lane's
process (service/decode_worker.py: `attach`, `step`, `end` between reads of its socket).
`submit` (event loop) and the loop share only the waiting queue, under a lock; answers and
tokens go back in one `Delivery` call per step. Queue limits, admission (429 with Retry-After
when the predicted wait passes the deadline), deadlines (504) and cancellation work as in
`service.batcher`; metrics observe it from outside (`DecodeObserver`, service/decode_items.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from service.decode_encoder import JoinEncoder
from service.decode_items import (
    Answer,
    DecodeItem,
    DecodeObserver,
    Delivery,
    LoopDelivery,
    NullObserver,
    StepEngine,
    StepStats,
    checked_steps,
    departed,
    new_items,
)
from service.decode_policy import (
    DecodeAdmission,
    DecodePolicy,
    cache_tokens,
    held_back,
    joining,
    refuse_if_full,
)
from service.engines.decode_io import Outcome
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams
from service.errors import ErrorKind, ServiceError

logger = logging.getLogger(__name__)


class DecodeScheduler:
    """One translator model's waiting queue, running set and step loop (on its own thread)."""

    def __init__(
        self,
        name: str,
        engine: StepEngine,
        policy: DecodePolicy,
        *,
        finish: Callable[[list[int]], Any],
        max_steps: Callable[[int], int],
        clock: Callable[[], float] = time.monotonic,
        observer: DecodeObserver | None = None,
        encode_ahead: bool = False,
        encode_streams_early: bool = False,
    ) -> None:
        """`finish` turns a finished sequence's ids into its answer (detokenizes); `max_steps`
        caps a max_new_tokens to what the decoder can represent; `encode_ahead`: joiners are
        encoded on a thread of their own beside the running batch's step; `encode_streams_early`:
        streamed ones on that thread as they arrive (module docstring)."""
        self.name = name
        self.policy = policy
        self._engine = engine
        self._finish = finish
        self._max_steps = max_steps
        self._clock = clock
        self._observer: DecodeObserver = observer or NullObserver()
        self.waiting: deque[DecodeItem] = deque()  # guarded by _wake (submit vs the loop)
        self.running: dict[int, DecodeItem] = {}  # the loop thread's alone
        self._rows = 0  # decoder rows of `running`, readable from any thread
        self._held_steps = 0  # steps the queue's head was held back to gather joiners (held_back)
        self._next_id = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._abort = False  # stop() timed out: fail what is left instead of finishing it
        self._thread: threading.Thread | None = None
        self._delivery: Delivery | None = None
        self._serving = False  # attached and its step loop not ended
        self._admission = DecodeAdmission(name, policy)
        self._encoder = JoinEncoder(
            name, engine, ahead=encode_ahead, streams_early=encode_streams_early
        )

    # ------------------------------------------------------------------ public API (as Batcher)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def available(self) -> bool:
        """Whether it takes work: started, its step loop running, not stopping."""
        return self._serving and not self._stopping

    @property
    def encodes_ahead(self) -> bool:
        """Whether joiners are encoded beside the running step (`encode_ahead`)."""
        return self._encoder.ahead

    def start(self) -> None:
        """Start the step loop's thread; answers are delivered to the running event loop."""
        self.attach(LoopDelivery(asyncio.get_running_loop()))
        self._thread = threading.Thread(
            target=self.run_steps, name=f"decode-{self.name}", daemon=True
        )
        self._thread.start()

    async def until_ready(self) -> None:
        """Ready once started (a lane in a process of its own waits for its model here)."""

    def attach(self, delivery: Delivery) -> None:
        """Take work whose answers go through `delivery`; then `run_steps` on a thread of its
        own (`start` does both for the event loop), or the caller's own loop of `step` and
        `end` (a lane's process, service/decode_worker.py)."""
        self._delivery = delivery
        self._serving = True

    def submit(
        self,
        payloads: Sequence[Encoded],
        tokens: Sequence[int] | None = None,
        *,
        key: Hashable,
        timeout_s: float,
        on_token: Callable[[int], None] | None = None,
    ) -> list[DecodeItem]:
        """Queue one request's sequences, all or none (on the event loop); `key` holds the
        decoding parameters. `on_token` (greedy) is called on the event loop."""
        del tokens  # the source ids give the lengths (kept for Batcher.submit's signature)
        if self._stopping:
            raise ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
        if not self._serving or self._delivery is None:
            raise ServiceError(ErrorKind.NOT_READY, f"model {self.name!r} is not running")
        steps = checked_steps(self.policy, key, (len(p.ids) for p in payloads), self._max_steps)
        assert isinstance(key, DecodingParams)  # checked_steps checked it
        delivery = self._delivery
        with self._wake:
            if len(self.waiting) + len(payloads) > self.policy.max_queue_size:
                self._drop_dead_waiting()
                refuse_if_full(
                    self.name,
                    self.policy,
                    len(self.waiting),
                    len(payloads),
                    lambda: self.retry_after_s(len(payloads)),
                )
            self._admission.check(
                self.waiting_rows,
                self._rows,
                key.beam_size * len(payloads),
                timeout_s,
                retry_after=self.retry_after_s,
            )
            items = new_items(
                self._next_id,
                payloads,
                key,
                steps,
                delivery.new_future,
                self._clock(),
                timeout_s,
                on_token,
            )
            self._next_id += len(items)
            if on_token is not None and self._encoder.streams_early and self._rows:
                self._encoder.on_arrival(items)  # a step is running: encode beside it
            self.waiting.extend(items)
            self._wake.notify()
        return items

    def predicted_wait_s(self, rows: int = 0) -> float | None:
        """Seconds until `rows` more decoder rows would get a place in the running batch (None
        before any sequence finished)."""
        return self._admission.predicted_wait_s(self.waiting_rows + rows, self._rows)

    def retry_after_s(self, extra: int = 0) -> int:
        """Whole seconds until the waiting sequences (plus `extra` rows) likely have a place."""
        return self._admission.retry_after_s(
            self.waiting_rows + extra, self._rows, len(self.waiting) + extra
        )

    @property
    def waiting_rows(self) -> int:
        """Decoder rows the waiting sequences will take (any thread: the loop pops the queue)."""
        with self._wake:  # re-entrant (an RLock): submit reads it holding the lock
            return sum(item.beam_size for item in self.waiting)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new work, let waiting and running sequences finish (up to `timeout_s`), then
        fail whatever is left with SHUTTING_DOWN."""
        self.begin_stop()
        thread = self._thread
        if thread is None:
            return
        await asyncio.to_thread(thread.join, timeout_s)
        if thread.is_alive():
            logger.warning("model %s: work left after %.1f s; cancelling", self.name, timeout_s)
            self.abort()
            await asyncio.to_thread(thread.join)

    def begin_stop(self) -> None:
        """Refuse new work; `run_steps` returns once the waiting and running sequences are done."""
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def abort(self) -> None:
        """After `begin_stop`: `run_steps` returns at the next boundary, failing what is left."""
        with self._wake:
            self._abort = True
            self._wake.notify()

    # ------------------------------------------------------------------ the loop (its thread)

    @property
    def idle(self) -> bool:
        """Nothing waiting or running."""
        return not self.waiting and not self.running

    @property
    def finished(self) -> bool:
        """Aborted, or stopping with nothing left: the step loop ends (`end`)."""
        return self._abort or (self._stopping and self.idle)

    def run_steps(self) -> None:
        """Step while there is work, wait while there is none, until `finished`; then `end`."""
        try:
            while True:
                with self._wake:
                    while self.idle and not self._stopping:
                        self._wake.wait()
                    if self.finished:
                        break
                self.step()
        except BaseException:
            logger.exception("model %s: decoding loop crashed", self.name)
        finally:
            self.end()

    def end(self) -> None:
        """Take no more work and fail what is left with SHUTTING_DOWN."""
        self._serving = False
        self._encoder.shutdown()
        self._fail_all(ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down"))

    def step(self) -> None:
        """Retire abandoned sequences, admit waiting ones, run one engine step, answer what
        finished (blocking: the loop's thread, or a test)."""
        leaves = self._abandoned()
        joins = self._admit()
        if not joins and not self.running:
            if leaves:  # the batch still holds their rows
                self._engine.step([], leaves)
            return
        in_step = list(self.running.values())  # what this step runs (less what is encoded)
        started = self._clock()
        try:
            encoded = [*self._encoder.take_ahead(self.running), *JoinEncoder.arrived(joins)]
            joins = [i for i in joins if i.encoding is None]
            # A step runs anyway: encode the joiners beside it; they join at the next one. A
            # streamed sequence joins at once: its client is waiting for the first piece.
            ahead = [i for i in joins if i.on_token is None]
            if ahead and self._encoder.ahead and self._engine.rows:
                self._encoder.encode_ahead(ahead)
                joins = [i for i in joins if i.on_token is not None]
                aside = {i.seq_id for i in ahead}
                in_step = [i for i in in_step if i.seq_id not in aside]
            rows = sum(i.beam_size for i in in_step)
            outcomes = self._engine.step([i.as_join() for i in joins], leaves, encoded)
        except Exception as error:
            logger.exception("model %s: a decoding step of %d rows failed", self.name, self._rows)
            self._deliver([(item, None, error) for item in self.running.values()])
            self.running.clear()
            self._rows = 0
            self._encoder.forget()  # its sequences were in `running`: answered above
            self._engine.reset()
            return
        rows_before = self._rows
        finished = self._retire(outcomes)
        seconds = self._clock() - started
        self._admission.observe_step(seconds, rows_before - self._rows)
        joined = len(joins) + sum(len(run.joins) for run in encoded)
        cache = cache_tokens(rows, in_step)
        self._observer.on_step(StepStats(rows, len(in_step), joined, finished, cache, seconds))

    def _abandoned(self) -> list[int]:
        """Running sequences whose client went away or whose deadline passed: they leave."""
        gone = self._dead(self.running.values(), "while decoding")
        for item in gone:
            del self.running[item.seq_id]
            self._rows -= item.beam_size
        return [item.seq_id for item in gone]

    def _admit(self) -> list[DecodeItem]:
        """Waiting sequences that join this step, as far as the budgets allow (`joining`)."""
        with self._wake:
            self._drop_dead_waiting()
            count = joining(self.waiting, self.running.values(), self._rows, self.policy)
            streamed = any(self.waiting[i].on_token is not None for i in range(count))
            if held_back(self.policy, count, self._rows, self._held_steps, streamed):
                self._held_steps += 1
                count = 0
            else:
                self._held_steps = 0
            joins = [self.waiting.popleft() for _ in range(count)]
        self._rows += sum(item.beam_size for item in joins)
        joined_at = self._clock()
        for item in joins:
            item.batch_size = self._rows
            item.joined_at = joined_at  # after batch_size: a reader seeing it sees both
            self.running[item.seq_id] = item
        return joins

    def _retire(self, outcomes: list[Outcome]) -> int:
        deliveries: list[Answer] = []
        tokens: list[tuple[DecodeItem, int]] = []
        for outcome in outcomes:
            item = self.running.get(outcome.seq_id)
            if item is None:
                continue
            if outcome.token is not None and item.on_token is not None:
                tokens.append((item, outcome.token))
            if outcome.result is not None:
                del self.running[outcome.seq_id]
                self._rows -= item.beam_size
                try:
                    deliveries.append((item, self._finish(outcome.result), None))
                except Exception as error:  # a detokenizer bug answers this request only
                    logger.exception("model %s: finishing a sequence failed", self.name)
                    deliveries.append((item, None, error))
        self._deliver(deliveries, tokens)
        return len(deliveries)

    def _deliver(
        self, deliveries: list[Answer], tokens: list[tuple[DecodeItem, int]] | None = None
    ) -> None:
        """Hand one step's tokens and answers over, in one call (one event-loop wake-up)."""
        if (deliveries or tokens) and self._delivery is not None:
            self._delivery.deliver(deliveries, tokens or [])

    # ------------------------------------------------------------------ helpers

    def _drop_dead_waiting(self) -> None:
        """Drop waiting sequences whose client left or whose deadline passed (hold _wake)."""
        dead = {id(item) for item in self._dead(self.waiting, "in the queue")}
        if dead:
            self.waiting = deque(item for item in self.waiting if id(item) not in dead)

    def _dead(self, items: Iterable[DecodeItem], where: str) -> list[DecodeItem]:
        """The sequences among `items` whose client went away or whose deadline passed; the
        expired ones are answered TIMEOUT ("the request timed out `where`"), both are counted
        as dropped. The caller takes them out of its queue."""
        dead, expired = departed(items, self._clock())
        if expired:
            error = ServiceError(ErrorKind.TIMEOUT, f"the request timed out {where}")
            self._fail(expired, error, "timeout")
        if len(dead) > len(expired):
            self._observer.on_dropped("cancelled", len(dead) - len(expired))
        return dead

    def _fail(self, items: list[DecodeItem], error: ServiceError, reason: str) -> None:
        """Answer `items` with `error` and count them as dropped for `reason`."""
        self._deliver([(item, None, error) for item in items])
        self._observer.on_dropped(reason, len(items))

    def _fail_all(self, error: ServiceError) -> None:
        with self._wake:
            left = [*self.waiting, *self.running.values()]
            self.waiting.clear()
            self.running.clear()
            self._rows = 0
        if left:
            self._fail(left, error, "shutdown")
