"""service/decode_process.py and service/decode_worker.py: a translator's lanes in processes of
their own (`decode_lane_processes`), on the real tiny translator (a long positional table, so a
1000-token greedy decode lasts long enough to act in the middle of it).

In process: the lanes built as the server builds them decode every sentence to the ids it gets
alone, greedy and beam; streamed tokens arrive; a cancelled sequence leaves its lane; a lane
whose process dies answers what it held and comes back; stopping drains, then the processes
exit. Over HTTP: a real uvicorn with lanes in processes answers, streams, and on SIGTERM leaves
no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.decode_items import DecodeItem
from service.decode_lanes import DecodeLanes
from service.decode_process import ProcessLane
from service.engines import SessionSettings, TranslatorEngine
from service.engines.session import SessionsReleased
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams
from service.errors import ErrorKind, ServiceError
from service.repository import ModelVersion, scan
from tests.conftest import ServerProcess
from tests.test_decode_scheduler import Recorder

SENTENCES = [f"a dog number {i} runs " + "fast " * (i % 7) for i in range(16)]
LONG = DecodingParams(beam_size=1, max_new_tokens=1000)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.tiny import tiny_translator_checkpoint
    from export.translator import export_translator

    root = tmp_path_factory.mktemp("lane-processes")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation noise (conftest)
        warnings.simplefilter("ignore", DeprecationWarning)
        checkpoint = tiny_translator_checkpoint(root / "checkpoint", max_positions=2048)
        export_translator(checkpoint, root / "repository", threads=1, max_new_tokens=16)
    return root / "repository"


@pytest.fixture(scope="module")
def version(repository: Path) -> ModelVersion:
    versions, _ = scan(repository, {})
    return next(v for v in versions if v.name == "translator")


@pytest.fixture(scope="module")
def engine(version: ModelVersion) -> TranslatorEngine:
    return TranslatorEngine(version, SessionSettings(providers="cpu", allow_spinning=False))


def process_lanes(
    version: ModelVersion,
    engine: TranslatorEngine,
    service_settings: Callable[..., Any],
    lanes: int = 2,
    **settings: Any,
) -> tuple[DecodeLanes, Recorder]:
    from service import translator_scheduling
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    recorder = Recorder()
    metrics.decode_observer = lambda name: recorder  # type: ignore[method-assign,assignment,return-value]
    configured = service_settings(decode_lane_processes=True, decode_lanes=lanes, **settings)
    scheduler = translator_scheduling.decode_scheduler(version, engine, configured, metrics)
    assert isinstance(scheduler, DecodeLanes)
    assert all(isinstance(lane, ProcessLane) for lane in scheduler.lanes)
    return scheduler, recorder


def alone(engine: TranslatorEngine, params: DecodingParams) -> list[str]:
    sources = engine.encoder.encode(SENTENCES)
    return [
        engine.finish(
            engine.generator.generate([s.ids], params.beam_size, params.max_new_tokens)[0]
        )
        for s in sources
    ]


def first_token(future: asyncio.Future[int]) -> Callable[[int], None]:
    """An `on_token` that answers `future` with the first token."""

    def on_token(token: int) -> None:
        if not future.done():
            future.set_result(token)

    return on_token


async def decoding(lanes: DecodeLanes | ProcessLane, source: Encoded) -> DecodeItem:
    """A 1000-token stream of `source`, once its first token has come: it decodes on."""
    first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    (item,) = lanes.submit([source], key=LONG, timeout_s=60, on_token=first_token(first))
    await first
    return item


@pytest.mark.parametrize("beam_size", [1, 3])
def test_lanes_in_processes_decode_as_if_alone(
    version: ModelVersion,
    engine: TranslatorEngine,
    service_settings: Callable[..., Any],
    beam_size: int,
) -> None:
    """Sentences sent one by one, a few milliseconds apart, spread over both processes: each
    decodes to what it decodes alone, and both lanes stepped."""
    params = DecodingParams(beam_size, 16)
    lanes, recorder = process_lanes(version, engine, service_settings)

    async def main() -> list[str]:
        lanes.start()
        await lanes.until_ready()
        futures = []
        for source in engine.encoder.encode(SENTENCES):
            (item,) = lanes.submit([source], key=params, timeout_s=30)
            futures.append(item.future)
            await asyncio.sleep(0.002 * (len(futures) % 3))
        answers = await asyncio.gather(*futures)
        await lanes.stop(10)
        return list(answers)

    assert asyncio.run(main()) == alone(engine, params)
    assert all(isinstance(lane, ProcessLane) and lane._admission._observed for lane in lanes.lanes)
    assert sum(step.finished for step in recorder.steps) == len(SENTENCES)


def test_streamed_tokens_arrive_and_a_cancelled_sequence_leaves(
    version: ModelVersion, engine: TranslatorEngine, service_settings: Callable[..., Any]
) -> None:
    """A streamed sequence's tokens arrive one by one and end in its answer; a 1000-token
    stream cancelled after its first token leaves its lane at a step boundary (counted as
    cancelled), long before it could have finished, and its rows are free again."""
    lanes, recorder = process_lanes(version, engine, service_settings, lanes=1)
    (source,) = engine.encoder.encode([SENTENCES[3]])

    async def main() -> tuple[list[int], str, float]:
        lanes.start()
        await lanes.until_ready()
        tokens: list[int] = []
        (item,) = lanes.submit([source], key=DecodingParams(1, 16), timeout_s=30,
                               on_token=tokens.append)  # fmt: skip
        answer = await item.future
        long = await decoding(lanes, source)
        long.future.cancel()
        started = time.monotonic()
        while recorder.dropped.get("cancelled", 0) == 0 and time.monotonic() - started < 10:
            await asyncio.sleep(0.01)
        left_after = time.monotonic() - started
        assert lanes.rows == 0 and lanes.queue_depth == 0
        await lanes.stop(10)
        return tokens, answer, left_after

    tokens, answer, left_after = asyncio.run(main())
    assert engine.finish(tokens) == answer == alone(engine, DecodingParams(1, 16))[3]
    assert recorder.dropped == {"cancelled": 1}
    assert left_after < 5


def test_a_lane_whose_process_dies_answers_its_sequences_and_comes_back(
    version: ModelVersion, engine: TranslatorEngine, service_settings: Callable[..., Any]
) -> None:
    """The process of a lane decoding a long sequence is killed: that request is answered at
    once (500, internal), counted as lost, and a new process takes work again."""
    lanes, recorder = process_lanes(version, engine, service_settings, lanes=1)
    (lane,) = lanes.lanes
    assert isinstance(lane, ProcessLane)
    (source,) = engine.encoder.encode([SENTENCES[0]])

    async def main() -> tuple[BaseException | None, str]:
        lanes.start()
        await lanes.until_ready()
        item = await decoding(lanes, source)
        assert lane._process is not None
        old = lane._process
        old.kill()
        error = await asyncio.wait_for(asyncio.gather(item.future, return_exceptions=True), 10)
        await asyncio.wait_for(lane.until_ready(), 60)
        assert lane._process is not old and lanes.available
        (again,) = lanes.submit([source], key=DecodingParams(1, 16), timeout_s=30)
        answer = await again.future
        await lanes.stop(10)
        return error[0], answer

    error, answer = asyncio.run(main())
    assert isinstance(error, ServiceError) and error.kind is ErrorKind.INTERNAL
    assert recorder.dropped.get("lost") == 1
    assert answer == alone(engine, DecodingParams(1, 16))[0]


def test_stopping_drains_then_the_processes_exit_and_refusals_come_first(
    version: ModelVersion, engine: TranslatorEngine, service_settings: Callable[..., Any]
) -> None:
    """What can never fit is refused at submit, in this process; a full queue answers 429;
    stop() lets queued and running sequences finish, the processes exit cleanly, and new work
    is refused as the server shutting down."""
    lanes, _ = process_lanes(
        version,
        engine,
        service_settings,
        lanes=1,
        max_queue_size=4,
        max_items_per_request=4,
        decode_max_running_sequences=2,
    )
    sources = engine.encoder.encode(SENTENCES[:4])

    async def main() -> list[str]:
        lanes.start()
        await lanes.until_ready()
        with pytest.raises(ServiceError) as too_wide:
            lanes.submit(sources[:1], key=DecodingParams(4, 16), timeout_s=30)
        assert too_wide.value.kind is ErrorKind.VALIDATION
        items = lanes.submit(sources, key=DecodingParams(1, 16), timeout_s=30)
        with pytest.raises(ServiceError) as full:
            lanes.submit(sources[:2], key=DecodingParams(1, 16), timeout_s=30)
        assert full.value.kind is ErrorKind.OVERLOADED and full.value.retry_after
        await lanes.stop(10)
        with pytest.raises(ServiceError) as late:
            lanes.submit(sources[:1], key=DecodingParams(1, 16), timeout_s=30)
        assert late.value.kind is ErrorKind.SHUTTING_DOWN
        return [item.future.result() for item in items]

    assert asyncio.run(main()) == alone(engine, DecodingParams(1, 16))[:4]
    (lane,) = lanes.lanes
    assert isinstance(lane, ProcessLane) and lane._process is not None
    assert lane._process.returncode == 0


def test_a_server_with_lanes_in_processes_answers_streams_and_leaves_none_behind(
    repository: Path, engine: TranslatorEngine, launch_server: Callable[..., ServerProcess]
) -> None:
    """Over HTTP (a real uvicorn): translations equal decoding alone, a stream ends with the
    translation, and SIGTERM drains and stops the lanes' processes with the server."""
    server = launch_server(repository, decode_lane_processes=True, decode_lanes=2)
    workers = psutil.Process(server.process.pid).children(recursive=True)
    assert len(workers) == 2
    body = {"texts": SENTENCES[:6], "max_new_tokens": 16, "beam_size": 1}
    answer = httpx.post(server.url + "/v1/translate", json=body, timeout=30)
    assert answer.status_code == 200
    assert answer.json()["translations"] == alone(engine, DecodingParams(1, 16))[:6]
    streamed = {"texts": SENTENCES[:1], "max_new_tokens": 16, "stream": True}
    stream = httpx.post(server.url + "/v1/translate", json=streamed, timeout=30)
    assert stream.status_code == 200 and "event: done" in stream.text
    # /metrics reads each lane's process, whose CPU and memory process_* (the server's) leaves out
    scraped = httpx.get(server.url + "/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]
    memory = {
        s.labels["lane"]: s.value
        for s in samples
        if s.name == "nlpserve_lane_process_resident_memory_bytes"
    }
    cpu = {
        s.labels["lane"]: s.value
        for s in samples
        if s.name == "nlpserve_lane_process_cpu_seconds_total"
    }
    assert set(memory) == set(cpu) == {"0", "1"}
    assert all(seconds > 0 for seconds in cpu.values())
    assert sorted(memory.values()) == pytest.approx(
        sorted(worker.memory_info().rss for worker in workers), rel=0.2
    )
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


@pytest.mark.parametrize("lane_processes", [True, False])
def test_the_server_drops_its_sessions_when_the_lanes_hold_their_own(
    version: ModelVersion,
    engine: TranslatorEngine,
    service_settings: Callable[..., Any],
    lane_processes: bool,
) -> None:
    """Loaded as the registry loads it: with lanes in processes the server's engine keeps its
    tokenizer and what its sessions told (answers equal decoding alone) and runs nothing
    itself; with lanes as threads it keeps its sessions."""
    from service.metrics import ServiceMetrics
    from service.served_model import LoadedModel, load_on_worker

    settings = service_settings(decode_lane_processes=lane_processes, decode_lanes=2)

    async def main() -> tuple[TranslatorEngine, list[str]]:
        loaded, worker = await load_on_worker(version, settings)
        assert isinstance(loaded, TranslatorEngine)
        model = LoadedModel.start(
            version, loaded, worker, settings, ServiceMetrics(), step_scheduled=True
        )
        try:
            await model.until_serving()
            sources = loaded.encoder.encode(SENTENCES[:4])
            params = DecodingParams(1, 16)
            items = model.batcher.submit(sources, key=params, timeout_s=30)
            return loaded, list(await asyncio.gather(*(item.future for item in items)))
        finally:
            await model.release(drain_timeout_s=10)

    loaded, translations = asyncio.run(main())
    assert translations == alone(engine, DecodingParams(1, 16))[:4]
    assert loaded.sessions_released is lane_processes
    assert loaded.generator.max_steps(10_000) == engine.generator.max_steps(10_000)
    if lane_processes:
        with pytest.raises(SessionsReleased):
            loaded.generator.start(loaded.generator.pad([[5, 6, 2]]))
    else:
        assert loaded.generator.start(loaded.generator.pad([[5, 6, 2]])).cross_k.size


def test_lanes_are_processes_by_default_from_two_lanes(
    monkeypatch: pytest.MonkeyPatch, service_settings: Callable[..., Any]
) -> None:
    """Two cores, two lanes: processes unless told otherwise; one lane stays a thread of the
    server (nothing to gain on one core, and the process's hops to pay)."""
    from service import translator_scheduling

    monkeypatch.setattr(translator_scheduling, "available_cores", lambda: 2)
    assert translator_scheduling.lane_processes(service_settings())
    assert not translator_scheduling.lane_processes(service_settings(decode_lanes=1))
    assert not translator_scheduling.lane_processes(service_settings(decode_lane_processes=False))
    assert translator_scheduling.lane_processes(
        service_settings(decode_lanes=1, decode_lane_processes=True)
    )


def test_lanes_are_pinned_in_turn_to_the_allowed_cores_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, service_settings: Callable[..., Any]
) -> None:
    """Off by default; on, lane i gets the i-th core this process may use, wrapping around."""
    from service import translator_scheduling

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 3})
    cores = translator_scheduling.lane_cores
    assert cores(service_settings(), 2) is None
    assert cores(service_settings(decode_lane_pinning=True), 2) == [3, 5]
    assert cores(service_settings(decode_lane_pinning=True), 3) == [3, 5, 3]


@pytest.mark.parametrize("pinning", [True, False])
def test_a_lane_process_runs_on_the_core_it_was_given(
    version: ModelVersion,
    engine: TranslatorEngine,
    service_settings: Callable[..., Any],
    pinning: bool,
) -> None:
    """The lane's process pins itself before it loads the model: its affinity is its core (the
    first this process may use), or left as the server's when pinning is off; it decodes as
    alone either way."""
    allowed = os.sched_getaffinity(0)
    lanes, _ = process_lanes(
        version, engine, service_settings, lanes=1, decode_lane_pinning=pinning
    )
    (lane,) = lanes.lanes
    assert isinstance(lane, ProcessLane)
    sources = engine.encoder.encode(SENTENCES[:2])

    async def main() -> tuple[set[int], list[str]]:
        lanes.start()
        await lanes.until_ready()
        assert lane._process is not None
        affinity = os.sched_getaffinity(lane._process.pid)
        items = lanes.submit(sources, key=DecodingParams(1, 16), timeout_s=30)
        answers = [await item.future for item in items]
        await lanes.stop(10)
        return affinity, answers

    affinity, answers = asyncio.run(main())
    assert affinity == ({min(allowed)} if pinning else allowed)
    assert answers == alone(engine, DecodingParams(1, 16))[:2]


def test_a_lane_whose_process_hangs_is_killed_and_replaced(
    version: ModelVersion, engine: TranslatorEngine
) -> None:
    """A process stopped in the middle of a decode (SIGSTOP: it holds a sequence and sends
    nothing) is killed once silent past the hang limit: its request is answered (internal)
    instead of waiting for its deadline, and a new process serves. Silence while it holds
    nothing (idle) is not a hang."""
    from service.decode_policy import DecodePolicy
    from service.decode_wire import LaneSpec

    recorder = Recorder()
    session = SessionSettings(providers="cpu", allow_spinning=False)
    spec = LaneSpec(version, session, DecodePolicy(), 0, "warning", "json", warmup=False)
    lane = ProcessLane(spec, max_steps=engine.generator.max_steps, observer=recorder, hang_s=0.5)
    (source,) = engine.encoder.encode([SENTENCES[0]])

    async def main() -> tuple[BaseException | None, float, str]:
        lane.start()
        await lane.until_ready()
        await asyncio.sleep(1.5)  # idle past the limit: silence while holding nothing is fine
        (short,) = lane.submit([source], key=DecodingParams(1, 16), timeout_s=30)
        await short.future
        item = await decoding(lane, source)
        assert lane._process is not None
        old = lane._process
        old.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        error = await asyncio.wait_for(asyncio.gather(item.future, return_exceptions=True), 20)
        answered_after = time.monotonic() - started
        await asyncio.wait_for(lane.until_ready(), 60)
        (again,) = lane.submit([source], key=DecodingParams(1, 16), timeout_s=30)
        answer = await again.future
        await lane.stop(10)
        assert old.poll() is not None  # killed, and reaped
        return error[0], answered_after, answer

    error, answered_after, answer = asyncio.run(main())
    assert isinstance(error, ServiceError) and error.kind is ErrorKind.INTERNAL
    assert answered_after < 10  # its deadline was 60 s away
    assert answer == alone(engine, DecodingParams(1, 16))[0]
    assert recorder.dropped.get("lost") == 1
