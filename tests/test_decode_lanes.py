"""service/decode_lanes.py: a translator's decoding split into independent step loops (lanes).

Policy with the fake runner of test_decode_scheduler (where requests go, the budgets' shares,
the metrics, stopping); then the real tiny translator served with two lanes: every sentence
decodes to the ids it gets alone, whichever lane took it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.decode_items import StepStats
from service.decode_lanes import (
    DecodeLanes,
    LaneObservers,
    lane_policy,
    scheduler_for,
)
from service.decode_policy import DecodePolicy
from service.decode_scheduler import DecodeScheduler
from service.engines.decode_batch import DecodeBatch
from service.engines.translator import DecodingParams
from service.lane_routing import SPILL_ROWS
from tests.test_decode_scheduler import GREEDY, FakeRunner, Recorder, src, unleash


def fake_lanes(
    count: int, tail_lane: bool = False, **policy: int
) -> tuple[DecodeLanes, list[FakeRunner], Recorder]:
    runners = [FakeRunner() for _ in range(count)]
    recorder = Recorder()

    def make(policy: DecodePolicy, observer: Any, index: int) -> DecodeScheduler:
        return DecodeScheduler(
            "translator",
            runners[index],
            policy,
            finish=lambda ids: " ".join(map(str, ids)),
            max_steps=lambda n: min(n, 20),
            observer=observer,
        )

    lanes = scheduler_for(count, make, DecodePolicy(**policy), recorder, tail_lane)
    assert isinstance(lanes, DecodeLanes)
    return lanes, runners, recorder


def test_one_lane_is_a_plain_scheduler_and_budgets_are_shared_out() -> None:
    made: list[DecodePolicy] = []

    def make(policy: DecodePolicy, observer: Any, index: int) -> DecodeScheduler:
        made.append(policy)
        return DecodeScheduler("t", FakeRunner(), policy, finish=str, max_steps=lambda n: n)

    policy = DecodePolicy(max_running_sequences=64, max_cache_tokens=16384, max_queue_size=1001)
    assert isinstance(scheduler_for(1, make, policy, Recorder()), DecodeScheduler)
    assert made == [policy]
    lanes = scheduler_for(3, make, policy, Recorder())
    assert isinstance(lanes, DecodeLanes) and len(lanes.lanes) == 3
    assert made[1:] == [DecodePolicy(22, 5462, 334)] * 3 == [lane_policy(policy, 3)] * 3


def test_streams_fill_a_lane_to_spill_rows_and_whole_answers_go_to_the_least_loaded() -> None:
    """A streamed request goes to lane 0 while it holds at most SPILL_ROWS rows with it (a
    beam-4 request weighs 4), then to lane 1, then to the lane with the fewest rows; a whole
    answer always goes to the least loaded lane. Every request is answered once, and stop
    drains every lane."""

    async def main() -> None:
        lanes, runners, _ = fake_lanes(2)
        for runner in runners:
            runner.permits = threading.Semaphore(0)  # nothing decodes until unleashed
        lanes.start()
        beam = DecodingParams(beam_size=4, max_new_tokens=32)
        streamed: list[int] = []
        items = []
        for key in [beam, beam, GREEDY, beam, GREEDY, GREEDY, GREEDY, GREEDY]:
            items += lanes.submit([src(5)], key=key, timeout_s=10, on_token=streamed.append)
        # lane 0: 4 + 4 = 8 rows; lane 1: 1 + 4 + 1 + 1 + 1 = 8; the last fits neither: the
        # least loaded (a tie: the first)
        assert [lane.waiting_rows for lane in lanes.lanes] == [9, 8] and lanes.queue_depth == 8
        assert SPILL_ROWS == 8
        for _ in range(3):  # whole answers: least loaded, a tie to the first
            items += lanes.submit([src(5)], key=GREEDY, timeout_s=10)
        assert [lane.waiting_rows for lane in lanes.lanes] == [10, 10]
        for runner in runners:
            unleash(runner)
        answers = await asyncio.gather(*(i.future for i in items))
        assert answers == ["7 7 7 7 7"] * 11
        assert streamed  # the streams' tokens reached their listener
        await lanes.stop(5)
        assert lanes.rows == 0 and lanes.queue_depth == 0
        assert all(runner.calls for runner in runners)
        with pytest.raises(TypeError):
            lanes.submit([src(5)], key="beam", timeout_s=10)

    asyncio.run(main())


def test_whole_answers_spread_over_the_lanes_from_the_first() -> None:
    async def main() -> None:
        lanes, runners, _ = fake_lanes(2)
        for runner in runners:
            runner.permits = threading.Semaphore(0)
        lanes.start()
        items = [lanes.submit([src(5)], key=GREEDY, timeout_s=10)[0] for _ in range(3)]
        assert [lane.waiting_rows for lane in lanes.lanes] == [2, 1]
        for runner in runners:
            unleash(runner)
        await asyncio.gather(*(i.future for i in items))
        await lanes.stop(5)

    asyncio.run(main())


def test_the_cache_gauge_is_the_sum_of_the_lanes_and_steps_pass_through() -> None:
    recorder = Recorder()
    observers = LaneObservers(recorder, 2)
    observers.lane(0).on_step(StepStats(4, 4, 1, 0, 100, 0.01))
    observers.lane(1).on_step(StepStats(2, 2, 2, 1, 30, 0.02))
    observers.lane(0).on_step(StepStats(3, 3, 0, 1, 80, 0.01))
    observers.lane(1).on_dropped("cancelled", 2)
    assert [s.cache_tokens for s in recorder.steps] == [100, 130, 110]
    assert [s.rows for s in recorder.steps] == [4, 2, 3]
    assert recorder.dropped == {"cancelled": 2}


def test_a_served_translator_decodes_in_lanes_as_if_alone(
    model_repository: Path,
    service_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The served translator on 2 cores gets two lanes on the one-thread decoder session; 24
    sentences submitted at once spread over both and each decodes to its ids alone."""
    from service import translator_scheduling
    from service.engines import SessionSettings, TranslatorEngine
    from service.metrics import ServiceMetrics
    from service.repository import scan

    monkeypatch.setattr(translator_scheduling, "available_cores", lambda: 2)
    versions, _ = scan(model_repository, {})
    version = next(v for v in versions if v.name == "translator")
    two_threads = SessionSettings(providers="cpu", intra_op_threads=2, allow_spinning=False)
    engine = TranslatorEngine(version, two_threads, single_thread_runs=True)
    assert engine.single_thread_generator.decoder is not engine.generator.decoder
    settings = service_settings(intra_op_threads=2, decode_lane_processes=False)
    assert translator_scheduling.decode_lanes(
        settings
    ) == 2 and not translator_scheduling.encodes_ahead(settings)
    assert translator_scheduling.decode_lanes(service_settings(side_by_side_under_load=False)) == 1
    assert translator_scheduling.decode_lanes(service_settings(decode_lanes=3)) == 3
    lanes = translator_scheduling.decode_scheduler(version, engine, settings, ServiceMetrics())
    assert isinstance(lanes, DecodeLanes) and len(lanes.lanes) == 2
    assert not any(lane._encoder.streams_early for lane in lanes.lanes)  # the default
    early = service_settings(
        intra_op_threads=2, decode_encode_streams_early=True, decode_lane_processes=False
    )
    other = translator_scheduling.decode_scheduler(version, engine, early, ServiceMetrics())
    assert isinstance(other, DecodeLanes)
    assert all(lane._encoder.streams_early for lane in other.lanes)
    texts = [f"a dog number {i} runs " + "fast " * (i % 7) for i in range(24)]
    sources = engine.encoder.encode(texts)
    stepped = [0, 0]
    for index, lane in enumerate(lanes.lanes):
        step = lane._engine.step

        def counted(*args: Any, _index: int = index, _step: Any = step) -> Any:
            stepped[_index] += 1
            return _step(*args)

        lane._engine.step = counted  # type: ignore[method-assign,assignment]

    async def main() -> list[str]:
        lanes.start()
        items = [lanes.submit([s], key=DecodingParams(1, 24), timeout_s=30)[0] for s in sources]
        answers = await asyncio.gather(*(item.future for item in items))
        await lanes.stop(10)
        return list(answers)

    answers = asyncio.run(main())
    alone = [engine.finish(engine.generator.generate([s.ids], 1, 24)[0]) for s in sources]
    assert answers == alone
    assert min(stepped) > 0, stepped  # both lanes decoded
    batches = [lane._engine for lane in lanes.lanes]
    narrow = engine.single_thread_generator
    assert all(isinstance(b, DecodeBatch) and b.generator is narrow for b in batches)
