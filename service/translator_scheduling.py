"""How a served translator's step scheduler is built from the service's settings: how many
lanes (service/decode_lanes.py), whether they are processes and on which cores, whether joiners
are encoded beside the step, and one lane's `DecodeScheduler` over the engine's decode batch."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from service.decode_items import DecodeObserver
from service.decode_lanes import DecodeLanes, Lane, scheduler_for
from service.decode_policy import DecodePolicy
from service.decode_process import ProcessLane
from service.decode_scheduler import DecodeScheduler
from service.decode_wire import LaneSpec
from service.engine_settings import session_settings
from service.engines import Engine, TranslatorEngine
from service.engines.session import CPU
from service.metrics import ServiceMetrics
from service.repository import ModelVersion
from service.settings import Settings, available_cores


def decode_lanes(settings: Settings) -> int:
    """Lanes of a step-scheduled translator's running batch (`Settings.decode_lanes`)."""
    if settings.decode_lanes is not None:
        return settings.decode_lanes
    return available_cores() if settings.side_by_side_under_load else 1


def lane_processes(settings: Settings) -> bool:
    """Whether a step-scheduled translator's lanes on CPU are processes of their own
    (`Settings.decode_lane_processes`; by default with two lanes or more: lanes that are threads
    wait for the GIL behind the event loop, service/decode_worker.py)."""
    if settings.decode_lane_processes is not None:
        return settings.decode_lane_processes
    return decode_lanes(settings) > 1


def lane_cores(settings: Settings, lanes: int) -> list[int] | None:
    """The core each lane process pins itself to, by lane index, with `decode_lane_pinning`
    (else None: the kernel places them). Pinned, a lane keeps its core and caches, and cannot
    leave a vCPU its hypervisor slows; measured both ways on a shared VM, hence opt-in."""
    if not settings.decode_lane_pinning:
        return None
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None
    return [allowed[index % len(allowed)] for index in range(lanes)]


def step_scheduled(engine: Engine, settings: Settings) -> bool:
    """Whether a loaded engine is decoded step by step: a translator, `translation_batching`
    step, and a decoder exported for it (else request-level batching serves it)."""
    return (
        isinstance(engine, TranslatorEngine)
        and settings.translation_batching == "step"
        and engine.generator.mixed_steps
    )


def lanes_in_processes(engine: Engine, settings: Settings) -> bool:
    """Whether a loaded engine's decoding runs in lane processes (which open their own sessions
    and warm them up): the server's own sessions then serve nothing."""
    return step_scheduled(engine, settings) and engine.provider == CPU and lane_processes(settings)


def encodes_ahead(settings: Settings) -> bool:
    """Whether a step-scheduled translator encodes joiners on a thread of their own beside the
    step (`Settings.decode_encode_ahead`). That thread needs a core the decoder leaves free:
    with every core in the decoder's run the two only take turns (no gain at 2 threads of 2),
    and with several lanes one lane's encoder runs beside the other lanes' steps anyway (32
    users in process, two alternated rounds: 2 lanes 244 / 256 req/s, 2 lanes encoding ahead
    247 / 257; over HTTP 216 / 209 vs 198 / 184; runs/s26, service/decode_lanes.py)."""
    if not settings.decode_encode_ahead or decode_lanes(settings) > 1:
        return False
    return settings.intra_op_threads < available_cores()


def decode_scheduler(
    version: ModelVersion, engine: TranslatorEngine, settings: Settings, metrics: ServiceMetrics
) -> DecodeScheduler | DecodeLanes:
    """The scheduler of a served translator, with the service's settings and metrics: on CPU,
    one per lane (service/decode_lanes.py), each in a process of its own with
    `decode_lane_processes` (service/decode_process.py)."""
    name = version.name
    policy = DecodePolicy(
        max_running_sequences=settings.decode_max_running_sequences,
        max_cache_tokens=settings.decode_max_cache_tokens,
        max_queue_size=settings.max_queue_size,
        join_group=settings.decode_join_group,
    )
    lanes = decode_lanes(settings) if engine.provider == CPU else 1
    make: Callable[[DecodePolicy, DecodeObserver, int], Lane]
    if lanes_in_processes(engine, settings):
        make = process_lane_maker(version, engine, settings)
    else:
        make = lane_maker(
            name,
            engine,
            side_by_side=lanes > 1,
            encode_ahead=encodes_ahead(settings),
            encode_streams_early=settings.decode_encode_streams_early,
        )
    return scheduler_for(
        lanes, make, policy, metrics.decode_observer(name), tail_lane=settings.decode_tail_lane
    )


def process_lane_maker(
    version: ModelVersion, engine: TranslatorEngine, settings: Settings
) -> Callable[[DecodePolicy, DecodeObserver, int], ProcessLane]:
    """What builds one lane of a translator in a process of its own: one-thread sessions (a
    lane's run is alone in its process), the server's logging and warm-up."""
    session = replace(session_settings(settings), providers="cpu", intra_op_threads=1)
    cores = lane_cores(settings, decode_lanes(settings))

    def make(policy: DecodePolicy, observer: DecodeObserver, index: int) -> ProcessLane:
        spec = LaneSpec(
            version,
            session,
            policy,
            index,
            log_level=settings.log_level,
            log_format=settings.log_format,
            warmup=settings.warmup,
            core=cores[index] if cores is not None else None,
        )
        return ProcessLane(spec, max_steps=engine.generator.max_steps, observer=observer)

    return make


def lane_maker(
    name: str,
    engine: TranslatorEngine,
    *,
    side_by_side: bool,
    encode_ahead: bool,
    encode_streams_early: bool = False,
) -> Callable[[DecodePolicy, DecodeObserver, int], DecodeScheduler]:
    """What builds one lane's scheduler of a translator (`scheduler_for`'s `make`)."""

    def make(policy: DecodePolicy, observer: DecodeObserver, index: int) -> DecodeScheduler:
        return DecodeScheduler(
            name,
            engine.decode_batch(side_by_side=side_by_side),
            policy,
            finish=engine.finish,
            max_steps=engine.generator.max_steps,
            observer=observer,
            encode_ahead=encode_ahead,
            encode_streams_early=encode_streams_early,
        )

    return make
