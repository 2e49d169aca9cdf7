"""The batcher's core loop, driven by a fake clock (no sleeping, no engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import pytest

from service.batch_policy import BatchPolicy
from service.batcher import Batcher, RunStats
from service.engines.runs import split_runs
from service.errors import ErrorKind, ServiceError


class FakeClock:
    """Time moves only when the test calls `advance`."""

    def __init__(self) -> None:
        self.t = 0.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self.t + timeout, timer))
        waiter = asyncio.ensure_future(event.wait())
        pending: set[asyncio.Future[Any]] = {waiter, timer}
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._timers = [(d, f) for d, f in self._timers if f is not timer]
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        for deadline, timer in self._timers:
            if deadline <= self.t and not timer.done():
                timer.set_result(None)
        await settle()


async def settle() -> None:
    """Let every ready task run until nothing changes."""
    for _ in range(20):
        await asyncio.sleep(0)


class Recorder:
    """A fake engine: records each run's payloads and answers payload * 10."""

    def __init__(self) -> None:
        self.runs: list[list[Any]] = []
        self.keys: list[Hashable] = []
        self.fail_with: Exception | None = None
        self.short_by = 0

    async def __call__(self, payloads: list[Any], key: Hashable) -> list[Any]:
        self.runs.append(list(payloads))
        self.keys.append(key)
        if self.fail_with is not None:
            raise self.fail_with
        results = [p * 10 for p in payloads]
        return results[: len(results) - self.short_by]


class Observer:
    def __init__(self) -> None:
        self.runs: list[RunStats] = []
        self.dropped: list[tuple[str, int]] = []

    def on_run(self, stats: RunStats) -> None:
        self.runs.append(stats)

    def on_dropped(self, reason: str, count: int) -> None:
        self.dropped.append((reason, count))


def run(test: Callable[..., Awaitable[None]], **policy: Any) -> None:
    """Run `test(batcher, engine, clock, observer)` with a started batcher."""

    async def main() -> None:
        clock, engine, observer = FakeClock(), Recorder(), Observer()
        settings: dict[str, Any] = {
            "max_batch_size": 8,
            "max_batch_tokens": 1000,
            "max_queue_delay_s": 0.005,
        }
        settings.update(policy)
        batcher: Batcher[int, int] = Batcher(
            "m", engine, BatchPolicy(**settings), clock=clock, observer=observer
        )
        batcher.start()
        try:
            await test(batcher, engine, clock, observer)
        finally:
            await batcher.stop(timeout_s=1.0)

    asyncio.run(main())


def submit(batcher: Batcher[int, int], *values: int, tokens: int = 4, **kw: Any) -> list[Any]:
    return batcher.submit(
        list(values), [tokens] * len(values), timeout_s=kw.pop("timeout_s", 60), **kw
    )


def test_window_starts_at_first_arrival() -> None:
    """A batch runs max_queue_delay after its first item arrived, with everything that came in
    the meantime; not earlier."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        first = submit(batcher, 1)
        await clock.advance(0.003)
        second = submit(batcher, 2)
        await clock.advance(0.0019)
        assert engine.runs == []
        await clock.advance(0.0001)
        assert engine.runs == [[1, 2]]
        assert [first[0].future.result(), second[0].future.result()] == [10, 20]

    run(body)


def test_full_batch_runs_without_waiting() -> None:
    """Reaching max_batch_size closes the batch at once; the rest waits for the next one."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        submit(batcher, *range(1, 6))
        await settle()
        assert engine.runs == [[1, 2, 3, 4]]
        await clock.advance(0.005)
        assert engine.runs == [[1, 2, 3, 4], [5]]

    run(body, max_batch_size=4)


def test_token_budget_counts_padded_tokens() -> None:
    """The batch closes before items x longest item passes max_batch_tokens."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        batcher.submit([1, 2, 3], [10, 10, 30], timeout_s=60)
        await settle()
        # 2 x 10 = 20 fits; adding the 30-token item would pad to 3 x 30 = 90 > 60.
        assert engine.runs == [[1, 2]]
        await clock.advance(0.005)
        assert engine.runs[-1] == [3]

    run(body, max_batch_tokens=60)


def test_single_item_over_budget_still_runs() -> None:
    """An item longer than the token budget runs alone instead of waiting forever."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        items = batcher.submit([7], [500], timeout_s=60)
        await clock.advance(0.005)
        assert engine.runs == [[7]] and items[0].future.result() == 70

    run(body, max_batch_tokens=100)


def test_batch_is_sorted_by_length() -> None:
    """Inside a batch the engine sees items from shortest to longest."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        batcher.submit([1, 2, 3, 4], [9, 3, 7, 5], timeout_s=60)
        await clock.advance(0.005)
        assert engine.runs == [[2, 4, 3, 1]]

    run(body, run_overhead_tokens=1000)  # never worth splitting


def test_mixed_lengths_split_into_runs() -> None:
    """Short and long items go into separate runs when the padding saved outweighs a run's cost,
    and every item still gets its own result."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, observer: Observer) -> None:
        items = batcher.submit([1, 2, 3, 4], [100, 5, 6, 100], timeout_s=60)
        await clock.advance(0.005)
        assert engine.runs == [[2, 3], [1, 4]]
        assert [i.future.result() for i in items] == [10, 20, 30, 40]
        assert [(s.size, s.real_tokens, s.padded_tokens) for s in observer.runs] == [
            (2, 11, 12),
            (2, 200, 200),
        ]

    run(body, run_overhead_tokens=32)


def test_run_holding_the_oldest_item_goes_first() -> None:
    """A long text that arrived first is not served after the shorter runs of its batch: runs
    start in order of their oldest item (here the long run, then the short one)."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        old = batcher.submit([1], [100], timeout_s=60)
        await clock.advance(0.001)
        young = batcher.submit([2, 3], [5, 6], timeout_s=60)
        await clock.advance(0.004)
        assert engine.runs == [[1], [2, 3]]
        assert [i.future.result() for i in old + young] == [10, 20, 30]

    run(body, run_overhead_tokens=32)


def test_regroup_wait_gathers_the_clients_of_the_last_run() -> None:
    """With regroup_wait, after a run of 3 a lone item waits (up to the wait, counted from the
    run's end) for the others to come back, then all run together; a batch as large as the last
    run goes at once, and a lone item that no one joins runs when the wait is over."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        submit(batcher, 1, 2, 3)
        await settle()
        assert engine.runs == [[1, 2, 3]]
        submit(batcher, 4)
        await clock.advance(0.001)
        assert engine.runs == [[1, 2, 3]]  # waiting for company
        submit(batcher, 5, 6)
        await settle()
        assert engine.runs[-1] == [4, 5, 6]  # as many as last time: no more waiting
        submit(batcher, 7)
        await clock.advance(0.0019)
        assert engine.runs[-1] == [4, 5, 6]
        await clock.advance(0.0002)  # the wait (2 ms after the last run ended) is over
        assert engine.runs[-1] == [7]

    run(body, max_queue_delay_s=0.0, regroup_wait_s=0.002)


def test_without_regroup_wait_a_lone_item_runs_at_once() -> None:
    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        submit(batcher, 1, 2, 3)
        await settle()
        submit(batcher, 4)
        await settle()
        assert engine.runs == [[1, 2, 3], [4]]

    run(body, max_queue_delay_s=0.0)


def test_split_runs_minimises_padding_plus_overhead() -> None:
    """split_runs cuts only where it pays: never for equal lengths, always for a big jump."""
    assert split_runs([], 10) == []
    assert split_runs([8, 8, 8], 0) == [(0, 3)]
    assert split_runs([1, 2, 3, 100], 10) == [(0, 3), (3, 4)]
    assert split_runs([10, 11, 12], 10) == [(0, 3)]  # cutting saves 2 tokens, costs 10
    assert split_runs([1, 50, 100], 0) == [(0, 1), (1, 2), (2, 3)]


def test_results_reach_the_right_requests() -> None:
    """Two requests batched together each get their own results, in their own order."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        a = batcher.submit([1, 2], [8, 2], timeout_s=60)
        b = batcher.submit([3], [5], timeout_s=60)
        await clock.advance(0.005)
        assert len(engine.runs) == 1
        assert [i.future.result() for i in a] == [10, 20]
        assert [i.future.result() for i in b] == [30]
        assert {i.batch_size for i in a + b} == {3}

    run(body, run_overhead_tokens=1000)


def test_cancelled_items_are_skipped() -> None:
    """An item whose request gave up (future cancelled) never reaches the engine."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, observer: Observer) -> None:
        kept, dropped = submit(batcher, 1), submit(batcher, 2)
        dropped[0].future.cancel()
        await clock.advance(0.005)
        assert engine.runs == [[1]]
        assert kept[0].future.result() == 10
        assert ("cancelled", 1) in observer.dropped

    run(body)


def test_engine_error_reaches_every_waiting_request() -> None:
    """When a run raises, every item of it gets that exception; the loop keeps serving."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, observer: Observer) -> None:
        engine.fail_with = RuntimeError("boom")
        items = submit(batcher, 1, 2, 3)
        await clock.advance(0.005)
        for item in items:
            with pytest.raises(RuntimeError, match="boom"):
                item.future.result()
        assert observer.runs[-1].failed
        engine.fail_with = None
        again = submit(batcher, 4)
        await clock.advance(0.005)
        assert again[0].future.result() == 40

    run(body)


def test_result_count_is_checked() -> None:
    """An engine returning fewer results than inputs fails the whole run, not some requests."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        engine.short_by = 1
        items = submit(batcher, 1, 2)
        await clock.advance(0.005)
        for item in items:
            with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
                item.future.result()

    run(body)


def test_full_queue_refuses_the_whole_request() -> None:
    """Past max_queue_size a request is refused as a whole (OVERLOADED, with Retry-After)."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        submit(batcher, 1, 2, 3)
        with pytest.raises(ServiceError) as refused:
            submit(batcher, 4, 5)
        assert refused.value.kind is ErrorKind.OVERLOADED
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        assert batcher.queue_depth == 3
        await clock.advance(0.005)
        assert engine.runs == [[1, 2, 3]]

    run(body, max_queue_size=4)


def test_expired_items_time_out_without_running() -> None:
    """An item still queued at its deadline gets TIMEOUT and is not run."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, observer: Observer) -> None:
        late = submit(batcher, 1, timeout_s=0.001)
        await clock.advance(0.005)
        assert engine.runs == []
        with pytest.raises(ServiceError) as error:
            late[0].future.result()
        assert error.value.kind is ErrorKind.TIMEOUT
        assert ("timeout", 1) in observer.dropped

    run(body)


def test_items_batch_only_with_their_key() -> None:
    """Items with different keys (decoding parameters) never share a run."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, _: Any) -> None:
        submit(batcher, 1, key="greedy")
        submit(batcher, 2, key="beam")
        submit(batcher, 3, key="greedy")
        await clock.advance(0.005)
        await clock.advance(0.005)
        assert engine.runs == [[1, 3], [2]]
        assert engine.keys == ["greedy", "beam"]

    run(body)


def test_stop_drains_queued_work_then_refuses() -> None:
    """stop() runs what is queued without waiting for the window; later submits are refused."""

    async def main() -> None:
        engine = Recorder()
        batcher: Batcher[int, int] = Batcher(
            "m", engine, BatchPolicy(max_queue_delay_s=60), clock=FakeClock()
        )
        batcher.start()
        items = submit(batcher, 1, 2)
        await batcher.stop(timeout_s=1.0)
        assert [i.future.result() for i in items] == [10, 20]
        with pytest.raises(ServiceError) as refused:
            submit(batcher, 3)
        assert refused.value.kind is ErrorKind.SHUTTING_DOWN

    asyncio.run(main())


def test_stop_timeout_answers_everything_left() -> None:
    """If work cannot finish within the stop timeout, every waiting item gets SHUTTING_DOWN."""

    async def main() -> None:
        release = asyncio.Event()

        async def stuck(payloads: list[int], key: Hashable) -> list[int]:
            await release.wait()
            return payloads

        batcher: Batcher[int, int] = Batcher(
            "m", stuck, BatchPolicy(max_batch_size=1, max_queue_delay_s=0), clock=FakeClock()
        )
        batcher.start()
        items = submit(batcher, 1, 2, 3)
        await settle()
        await batcher.stop(timeout_s=0.01)
        for item in items:
            assert item.future.done()
            with pytest.raises(ServiceError) as error:
                item.future.result()
            assert error.value.kind is ErrorKind.SHUTTING_DOWN

    asyncio.run(main())


def test_observer_sees_queue_wait_and_padding() -> None:
    """Run stats carry per-item queue waits and real vs padded tokens."""

    async def body(batcher: Any, engine: Recorder, clock: FakeClock, observer: Observer) -> None:
        batcher.submit([1], [2], timeout_s=60)
        await clock.advance(0.002)
        batcher.submit([2], [4], timeout_s=60)
        await clock.advance(0.003)
        (stats,) = observer.runs
        assert stats.size == 2 and stats.real_tokens == 6 and stats.padded_tokens == 8
        assert stats.queue_waits == pytest.approx((0.005, 0.003))

    run(body, run_overhead_tokens=1000)


class Gated:
    """A fake engine whose runs block until the test opens them one by one (in start order)."""

    def __init__(self) -> None:
        self.started: list[list[int]] = []
        self._gates: list[asyncio.Event] = []

    async def __call__(self, payloads: list[int], key: Hashable) -> list[int]:
        gate = asyncio.Event()
        self.started.append(list(payloads))
        self._gates.append(gate)
        await gate.wait()
        return [p * 10 for p in payloads]

    async def finish(self, index: int) -> None:
        self._gates[index].set()
        await settle()


class Alone(Gated):
    """A Gated engine that also records which runs went through `run_alone` (all threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.alone: list[list[int]] = []

    async def run_alone(self, payloads: list[int], key: Hashable) -> list[int]:
        self.alone.append(list(payloads))
        return await self(payloads, key)


def gated(test: Callable[..., Awaitable[None]], run_alone: bool = False, **policy: Any) -> None:
    """Run `test(batcher, engine)` on a Gated engine (an Alone one, given to the batcher as its
    `run_alone` when `run_alone`)."""

    async def main() -> None:
        engine = Alone()
        settings: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_s": 0.0, **policy}
        batcher: Batcher[int, int] = Batcher(
            "m",
            engine,
            BatchPolicy(**settings),
            clock=FakeClock(),
            run_alone=engine.run_alone if run_alone else None,
        )
        batcher.start()
        try:
            await test(batcher, engine)
        finally:
            for gate in engine._gates:
                gate.set()
            await batcher.stop(timeout_s=1.0)

    asyncio.run(main())


def test_zero_delay_runs_a_lone_item_at_once_and_batches_what_queued_meanwhile() -> None:
    """With max_queue_delay 0 an idle engine takes the first item without waiting; what arrives
    while it runs is queued and goes in together as soon as the engine is free."""

    async def body(batcher: Any, engine: Gated) -> None:
        first = submit(batcher, 1)
        await settle()
        assert engine.started == [[1]]  # no window to wait out
        later = submit(batcher, 2) + submit(batcher, 3, 4)
        await settle()
        assert engine.started == [[1]]  # one run at a time by default
        await engine.finish(0)
        assert first[0].future.result() == 10
        assert engine.started == [[1], [2, 3, 4]]
        await engine.finish(1)
        assert [i.future.result() for i in later] == [20, 30, 40]

    gated(body)


def test_concurrent_runs_fill_every_slot_and_no_more() -> None:
    """max_concurrent_runs=2: two batches are in the engine at once, a third waits for a slot,
    and it takes everything queued by then."""

    async def body(batcher: Any, engine: Gated) -> None:
        a = submit(batcher, 1)
        await settle()
        b = submit(batcher, 2)
        await settle()
        assert engine.started == [[1], [2]]
        c = submit(batcher, 3) + submit(batcher, 4)
        await settle()
        assert len(engine.started) == 2
        await engine.finish(1)  # the second run ends first: its slot goes to the queue
        assert b[0].future.result() == 20 and not a[0].future.done()
        assert engine.started == [[1], [2], [3, 4]]
        await engine.finish(0)
        await engine.finish(2)
        assert [i.future.result() for i in a + c] == [10, 30, 40]

    gated(body, max_concurrent_runs=2)


def test_runs_of_one_batch_go_side_by_side_with_two_slots() -> None:
    """A batch cut into two runs (very different lengths) uses both slots at once."""

    async def body(batcher: Any, engine: Gated) -> None:
        long = batcher.submit([3], [200], timeout_s=60)
        short = batcher.submit([1, 2], [2, 2], timeout_s=60)  # same batch: no await between
        await settle()
        # Sorted by length, cut apart, and both runs are in the engine at once.
        assert engine.started == [[1, 2], [3]]
        await engine.finish(1)
        assert long[0].future.result() == 30 and not short[0].future.done()
        await engine.finish(0)
        assert [i.future.result() for i in short] == [10, 20]

    gated(body, max_concurrent_runs=2, run_overhead_tokens=1)


def test_stop_waits_for_every_run_in_flight() -> None:
    """stop() with two runs in the engine lets both finish and answers their items."""

    async def main() -> None:
        engine = Gated()
        batcher: Batcher[int, int] = Batcher(
            "m",
            engine,
            BatchPolicy(max_queue_delay_s=0, max_concurrent_runs=2),
            clock=FakeClock(),
        )
        batcher.start()
        first = submit(batcher, 1)
        await settle()
        second = submit(batcher, 2)
        await settle()
        stopping = asyncio.ensure_future(batcher.stop(timeout_s=5.0))
        await settle()
        assert not stopping.done()
        await engine.finish(0)
        await engine.finish(1)
        await stopping
        assert [first[0].future.result(), second[0].future.result()] == [10, 20]

    asyncio.run(main())


def test_stop_timeout_with_concurrent_runs_answers_everything() -> None:
    """Runs that never finish, in two slots, plus queued work: after the stop timeout every
    item is answered SHUTTING_DOWN and nothing hangs."""

    async def main() -> None:
        engine = Gated()
        batcher: Batcher[int, int] = Batcher(
            "m",
            engine,
            BatchPolicy(max_batch_size=1, max_queue_delay_s=0, max_concurrent_runs=2),
            clock=FakeClock(),
        )
        batcher.start()
        items = submit(batcher, 1, 2, 3, 4)
        await settle()
        assert len(engine.started) == 2
        await batcher.stop(timeout_s=0.01)
        for item in items:
            with pytest.raises(ServiceError) as error:
                item.future.result()
            assert error.value.kind is ErrorKind.SHUTTING_DOWN

    asyncio.run(main())


class Timed:
    """A fake engine whose runs take 0.1 s of fake time per item."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def __call__(self, payloads: list[int], key: Hashable) -> list[int]:
        self.clock.t += 0.1 * len(payloads)
        return payloads


def test_retry_after_counts_the_concurrent_slots() -> None:
    """Retry-After estimates the drain time of the accepted work over all slots, not one."""

    async def main() -> None:
        clocks = FakeClock(), FakeClock()

        def make(clock: FakeClock, slots: int) -> Batcher[int, int]:
            batcher: Batcher[int, int] = Batcher(
                "m", Timed(clock), BatchPolicy(max_concurrent_runs=slots), clock=clock
            )
            batcher._admission.seconds_per_token = 0.025 / slots  # a run: 0.1 s per 4-token item
            return batcher

        one, four = make(clocks[0], 1), make(clocks[1], 4)
        items = []
        for b in (one, four):
            b.start()
            items += b.submit(list(range(100)), [4] * 100, timeout_s=3600)
        assert one.retry_after_s() == 10
        assert four.retry_after_s() == 3  # ceil(100 * 0.1 / 4)
        for item in items:  # the clients give up; nothing ran (the window never closed)
            item.future.cancel()
        for b in (one, four):
            await b.stop(1)

    asyncio.run(main())


def test_admission_measures_throughput_and_refuses_work_past_its_deadline() -> None:
    """After a measured run, a request whose predicted wait (queued tokens over the measured
    seconds per token) passes its deadline is refused up front with a Retry-After equal to the
    predicted drain time; one with time to spare is accepted."""

    async def main() -> None:
        clock = FakeClock()
        batcher: Batcher[int, int] = Batcher(
            "m", Timed(clock), BatchPolicy(max_queue_delay_s=1, max_batch_size=64), clock=clock
        )
        batcher.start()
        assert batcher.predicted_wait_s() is None  # nothing measured: no prediction
        first = submit(batcher, 1)
        with pytest.raises(ServiceError) as cold:  # past one batch budget before a measurement
            batcher.submit([0] * 300, [40] * 300, timeout_s=3600)
        assert cold.value.kind is ErrorKind.OVERLOADED
        await clock.advance(1)
        assert first[0].future.result() == 1
        assert batcher.predicted_wait_s() == pytest.approx(0.0)
        queued = submit(batcher, *range(20), timeout_s=3600)  # 80 tokens: 2 s of work
        assert batcher.predicted_wait_s(4) == pytest.approx(2.1)
        with pytest.raises(ServiceError) as refused:
            submit(batcher, 99, timeout_s=2.0)
        assert refused.value.kind is ErrorKind.OVERLOADED
        assert refused.value.retry_after == 2
        accepted = submit(batcher, 98, timeout_s=5.0)
        await clock.advance(1)
        assert [i.future.result() for i in queued + accepted] == [*range(20), 98]
        await batcher.stop(0)

    asyncio.run(main())


def test_a_run_with_the_server_to_itself_takes_every_slot() -> None:
    """Idle server: the lone request runs alone (all threads); a request arriving meanwhile
    waits for it instead of starting beside it on a core the first run is using."""

    async def body(batcher: Any, engine: Alone) -> None:
        first = submit(batcher, 1)
        await settle()
        assert engine.alone == [[1]]
        second = submit(batcher, 2)
        await settle()
        assert engine.started == [[1]]  # both slots are held by the run alone
        await engine.finish(0)
        assert first[0].future.result() == 10
        # The first run ended with work queued: under load, so the next run is not alone.
        assert engine.started == [[1], [2]] and engine.alone == [[1]]
        await engine.finish(1)
        assert second[0].future.result() == 20

    gated(body, run_alone=True, max_concurrent_runs=2)


def test_under_load_runs_go_side_by_side_until_the_queue_stays_empty() -> None:
    async def body(batcher: Any, engine: Alone) -> None:
        a = submit(batcher, 1)
        await settle()
        b = submit(batcher, 2)
        await settle()
        await engine.finish(0)  # [1] ran alone; [2] was queued when it ended
        c = submit(batcher, 3)
        await settle()
        # Under load: [2] and [3] are in the engine at once, one slot each, not alone.
        assert engine.started == [[1], [2], [3]] and engine.alone == [[1]]
        await engine.finish(1)  # nothing queued when [2] ends
        await engine.finish(2)
        d = submit(batcher, 4)
        await settle()
        assert engine.alone == [[1], [4]]  # idle again: alone
        await engine.finish(3)
        assert [i.future.result() for i in a + b + c + d] == [10, 20, 30, 40]

    gated(body, run_alone=True, max_concurrent_runs=2)


def test_a_batch_cut_into_runs_never_runs_alone() -> None:
    async def body(batcher: Any, engine: Alone) -> None:
        long = batcher.submit([3], [200], timeout_s=60)
        short = batcher.submit([1, 2], [2, 2], timeout_s=60)
        await settle()
        assert engine.started == [[1, 2], [3]] and engine.alone == []
        await engine.finish(0)
        await engine.finish(1)
        assert [i.future.result() for i in short + long] == [10, 20, 30]

    gated(body, run_alone=True, max_concurrent_runs=2, run_overhead_tokens=1)
