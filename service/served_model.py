"""One served model version: `LoadedModel` once its engine loaded and warmed up (everything a
request needs, nothing optional), `UnavailableModel` while it loads or after it failed (its state
and the reason). The registry (service/registry.py) holds them and decides which one serves.

A request runs on a LoadedModel with `run`: its sequences go into the model's queue (the batcher,
or the translator's step scheduler), which runs batches of them with `engine.run` on the model's
worker thread; `run` waits for every result, the request's deadline, or the client going away,
whichever comes first.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from service.batch_policy import BatchPolicy
from service.batcher import Batcher
from service.decode_lanes import DecodeLanes
from service.decode_scheduler import DecodeScheduler
from service.engine_settings import session_settings
from service.engines import (
    ClassifierEngine,
    Encoded,
    Engine,
    ModelWorker,
    TranslatorEngine,
    load_engine,
)
from service.errors import ErrorKind, ServiceError
from service.metrics import ServiceMetrics
from service.repository import ModelConfig, ModelVersion
from service.settings import Settings
from service.stats import FanOut, ModelStatistics
from service.tracing import mark_batches
from service.translator_scheduling import (
    decode_lanes,
    decode_scheduler,
    lane_processes,
    lanes_in_processes,
)

Disconnected = Callable[[], Awaitable[None]]  # completes when the client has gone away
T = TypeVar("T")


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"  # replaced or unloaded: out of lookups, draining or released


@dataclass(eq=False)
class UnavailableModel:
    """A model version that serves nothing: still LOADING, or FAILED with the reason. A model
    directory that cannot be read at all is one too, without a version (and without a config
    when config.json itself is unreadable)."""

    name: str
    state: ModelState
    config: ModelConfig | None = None
    version: int | None = None
    reason: str | None = None  # why FAILED (server log wording; not sent to clients)
    manifest: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""  # of the manifest it is loaded from

    @property
    def ready(self) -> bool:
        return False

    @property
    def provider(self) -> str | None:
        return None  # no engine, no execution provider

    @property
    def queue_depth(self) -> int:
        return 0

    @property
    def version_str(self) -> str:
        return "" if self.version is None else str(self.version)

    def lane_process_ids(self) -> list[tuple[int, int]]:
        return []  # nothing runs

    @classmethod
    def loading(cls, version: ModelVersion) -> UnavailableModel:
        return cls(
            version.name,
            ModelState.LOADING,
            config=version.config,
            version=version.version,
            manifest=version.manifest.model_dump(exclude={"files"}),
            fingerprint=version.fingerprint,
        )


@dataclass(frozen=True)
class Results:
    """What `LoadedModel.run` brings back for one request's sequences."""

    values: list[Any]  # one per sequence, in order
    batch_size: int  # the largest engine run they went into, for the request log
    enqueued_at: float
    run_started: float  # when the last of them started running (monotonic clock)


@dataclass(eq=False)
class LoadedModel:
    """A model version that serves: its engine (sessions and tokenizer), the worker thread the
    engine runs on, and the queue in front of it, with the version's statistics."""

    name: str
    version: int
    config: ModelConfig
    engine: Engine
    worker: ModelWorker
    batcher: Batcher[Encoded, Any] | DecodeScheduler | DecodeLanes
    stats: ModelStatistics
    manifest: dict[str, Any]
    fingerprint: str
    state: ModelState = ModelState.READY  # RETIRED once released
    reason: str | None = None

    @classmethod
    def start(
        cls,
        version: ModelVersion,
        engine: Engine,
        worker: ModelWorker,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        step_scheduled: bool,
    ) -> LoadedModel:
        """Start the queue of a loaded engine: the step scheduler for a translator decoded step
        by step, else a batcher running `engine.run` on `worker`."""
        name = version.name
        stats = ModelStatistics(name, str(version.version))
        batcher: Batcher[Encoded, Any] | DecodeScheduler | DecodeLanes
        if step_scheduled:
            assert isinstance(engine, TranslatorEngine)
            batcher = decode_scheduler(version, engine, settings, metrics)
            if lanes_in_processes(engine, settings):
                engine.release_sessions()  # the lanes hold their own (the caller trims the heap)
        else:
            run: Callable[[list[Encoded], Any], Sequence[Any]] = engine.run  # either engine's
            policy = BatchPolicy.for_model(version.config, settings)
            run_alone: Callable[[list[Encoded], Any], Awaitable[Sequence[Any]]] | None = None
            if side_by_side_runs(settings) > 1 and has_single_thread_runs(engine):
                # side by side under load: one-thread runs, as many as the threads of a run alone
                run_alone = functools.partial(worker.call, run)
                run = engine.run_single_thread
                policy = replace(policy, max_concurrent_runs=side_by_side_runs(settings))
            batcher = Batcher(  # runs each batch with engine.run on the model's worker thread
                name,
                functools.partial(worker.call, run),
                policy,
                observer=FanOut(metrics.batch_observer(name), stats),
                run_alone=run_alone,
            )
        batcher.start()
        return cls(
            name=name,
            version=version.version,
            config=version.config,
            engine=engine,
            worker=worker,
            batcher=batcher,
            stats=stats,
            manifest=version.manifest.model_dump(exclude={"files"}),
            fingerprint=version.fingerprint,
        )

    def lane_process_ids(self) -> list[tuple[int, int]]:
        """(lane index, pid) of a translator's lanes in processes of their own (else none)."""
        return self.batcher.lane_process_ids() if isinstance(self.batcher, DecodeLanes) else []

    async def until_serving(self) -> None:
        """Wait for what `start` started elsewhere: a translator's lanes in processes of their
        own load the model there (service/decode_process.py); raises if one failed."""
        if isinstance(self.batcher, DecodeScheduler | DecodeLanes):
            await self.batcher.until_ready()

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def provider(self) -> str:
        return self.engine.provider

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    @property
    def step_scheduled(self) -> bool:
        return isinstance(self.batcher, DecodeScheduler | DecodeLanes)

    async def run(
        self,
        encoded: list[Encoded],
        key: Hashable,
        *,
        remaining_s: float,
        timeout_s: float,
        disconnected: Disconnected | None,
    ) -> Results:
        """Queue one request's sequences (all or none: a full queue, or a wait predicted past
        the deadline, is refused with OVERLOADED) and wait for their results; `remaining_s` is
        what is left of the request's deadline `timeout_s`."""
        items = self.batcher.submit(
            encoded, [e.tokens for e in encoded], key=key, timeout_s=remaining_s
        )
        values = await wait_all(
            [item.future for item in items],
            remaining_s,
            disconnected,
            timeout_s,
            running=lambda: all(item.batch_size for item in items),
        )
        mark_batches(items)
        # A step-scheduled translator's sequences join running steps (no one run start): its
        # time after queueing all counts as engine time.
        started = [getattr(i, "run_started", None) or i.enqueued_at for i in items]
        return Results(values, max(i.batch_size for i in items), items[0].enqueued_at, max(started))

    async def release(self, drain_timeout_s: float) -> None:
        """Stop taking work, let the queue drain (up to `drain_timeout_s`), stop the worker."""
        await self.batcher.stop(drain_timeout_s)
        self.worker.shutdown()
        if self.state is ModelState.READY:
            self.state, self.reason = ModelState.RETIRED, "retired"


ServedModel = LoadedModel | UnavailableModel


def batch_policy(model: ServedModel, config: ModelConfig, settings: Settings) -> BatchPolicy:
    """The batching policy a model is served with: its batcher's when it runs (which may run
    more batches side by side than the settings say), else what its config and settings give."""
    if isinstance(model, LoadedModel) and isinstance(model.batcher, Batcher):
        return model.batcher.policy
    return BatchPolicy.for_model(config, settings)


async def load_on_worker(version: ModelVersion, settings: Settings) -> tuple[Engine, ModelWorker]:
    """Load, verify and warm up one version's engine on a worker of its own (blocking work, all
    on that worker); raises what went wrong, with the worker shut down."""
    side_by_side = side_by_side_runs(settings)
    worker = ModelWorker(version.name, max(settings.workers_per_model, side_by_side))
    # one-thread sessions for runs side by side under load, or a translator's lanes (unless each
    # lane is a process: it opens its own)
    single_thread_runs = side_by_side > 1 or (
        version.config.task == "translation"
        and decode_lanes(settings) > 1
        and not lane_processes(settings)
    )
    try:
        engine = await worker.call(
            functools.partial(load_engine, single_thread_runs=single_thread_runs),
            version,
            session_settings(settings),
        )
        if settings.warmup and not lanes_in_processes(engine, settings):  # lanes warm their own
            policy = BatchPolicy.for_model(version.config, settings)
            await worker.call(engine.warmup, policy.max_batch_size)
    except BaseException:  # a failure, or shutdown while loading
        worker.shutdown()
        raise
    return engine, worker


def has_single_thread_runs(engine: Engine) -> bool:
    """Whether the engine opened one-thread sessions to run batches side by side."""
    if isinstance(engine, ClassifierEngine):
        return engine.single_thread_session is not None
    return engine.single_thread_generator is not None


def side_by_side_runs(settings: Settings) -> int:
    """How many one-thread runs of a model's batches go side by side under load (0: none; see
    `Settings.side_by_side_under_load`)."""
    if not settings.side_by_side_under_load or settings.workers_per_model > 1:
        return 0  # several workers: the operator chose fixed runs side by side
    return settings.intra_op_threads if settings.intra_op_threads > 1 else 0


async def wait_all(
    futures: list[asyncio.Future[T]],
    remaining_s: float,
    disconnected: Disconnected | None,
    timeout_s: float,
    running: Callable[[], bool] | None = None,
) -> list[T]:
    """All results in order, or the first error; cancels what is left when giving up early
    (deadline, client gone, an error), so the queue skips it.

    The deadline is for waiting in the queue: when it passes with every item already in an
    engine run (`running()`), the answer is moments away and is awaited rather than thrown
    away (an event loop busy with other requests can notice a finished run late)."""
    combined = asyncio.gather(*futures)
    combined.add_done_callback(_retrieve)  # an error after we gave up must not log as unseen
    waiters: set[asyncio.Future[Any]] = {combined}
    watcher = asyncio.ensure_future(disconnected()) if disconnected else None
    if watcher is not None:
        waiters.add(watcher)
    try:
        done, _ = await asyncio.wait(
            waiters, timeout=remaining_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done and running is not None and running():
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if combined in done:
            try:
                return combined.result()  # raises the first item's error
            except ServiceError as e:
                if e.kind is ErrorKind.TIMEOUT:  # the queue's view of the same deadline
                    raise _timed_out(timeout_s) from None
                raise
            except Exception as e:  # the engine failed; the queue logged it with its traceback
                raise ServiceError(
                    ErrorKind.INTERNAL, "inference failed (details are in the server log)"
                ) from e
        if watcher is not None and watcher in done:
            raise ServiceError(ErrorKind.CLIENT_CLOSED, "the client closed the request")
        raise _timed_out(timeout_s)
    finally:
        for future in futures:
            future.cancel()  # no-op for done ones
        if not combined.done():
            combined.cancel()
        if watcher is not None:
            watcher.cancel()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _timed_out(timeout_s: float) -> ServiceError:
    """One 504 message for the deadline, whether it passed in the queue or in the engine."""
    return ServiceError(
        ErrorKind.TIMEOUT, f"the request took longer than request_timeout_s ({timeout_s:g} s)"
    )
