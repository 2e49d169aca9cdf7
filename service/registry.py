"""The served models: each model's state, engine, worker thread and batcher.

`load_all` reads the repository, then loads every model concurrently (each on its own worker
thread) and runs its warm-up batch; a model flips to READY only after that. A model that fails
(bad config, checksum mismatch, broken graph, no GPU for providers=cuda) is FAILED with its reason
logged; it never affects the others.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from service.batcher import Batcher, BatchPolicy
from service.decode_scheduler import DecodePolicy, DecodeScheduler
from service.engines import Engine, ModelWorker, SessionSettings, TranslatorEngine, load_engine
from service.errors import ErrorKind, ServiceError, shorten
from service.metrics import ServiceMetrics
from service.repository import ModelConfig, ModelVersion, RepositoryError, scan
from service.settings import Settings

logger = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class ServedModel:
    name: str
    state: ModelState
    config: ModelConfig | None = None  # None when config.json itself is unreadable
    version: int | None = None
    provider: str | None = None
    engine: Engine | None = None
    batcher: Batcher[Any, Any] | DecodeScheduler | None = None
    worker: ModelWorker | None = None
    reason: str | None = None  # why FAILED (server log wording; not sent to clients)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth if self.batcher else 0

    @property
    def version_str(self) -> str:
        return str(self.version) if self.version is not None else ""


def batch_policy(config: ModelConfig, settings: Settings) -> BatchPolicy:
    """The model's batching config with the service-wide overrides applied."""
    b = config.batching
    return BatchPolicy(
        max_batch_size=settings.max_batch_size or b.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens or b.max_batch_tokens,
        max_queue_delay_s=(
            settings.max_queue_delay_ms
            if settings.max_queue_delay_ms is not None
            else b.max_queue_delay_ms
        )
        / 1000,
        max_queue_size=settings.max_queue_size,
        run_overhead_tokens=settings.run_overhead_tokens,
        max_concurrent_runs=settings.workers_per_model,
        regroup_wait_s=settings.regroup_wait_ms / 1000,
    )


def session_settings(settings: Settings) -> SessionSettings:
    return SessionSettings(
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        graph_optimization_level=settings.graph_optimization_level,
        allow_spinning=settings.allow_spinning,
        cuda_device_id=settings.cuda_device_id,
    )


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, ServedModel] = {}
        self.loading_done = False

    # ------------------------------------------------------------------ queries

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ServiceError(ErrorKind.NOT_FOUND, f"unknown model {shorten(name)}")
        return model

    def ready(self) -> bool:
        """Readiness: loading finished and every model (strict) or at least one model ready."""
        if not self.loading_done:
            return False
        states = [m.ready for m in self._models.values()]
        if self._settings.strict_readiness:
            return bool(states) and all(states)
        return any(states)

    # ------------------------------------------------------------------ loading

    async def load_all(self) -> None:
        """Load every model of the repository; never raises for one model's failure."""
        try:
            found, problems = await asyncio.to_thread(
                scan, self._settings.model_repository, self._settings.pinned_versions
            )
        except RepositoryError as e:
            logger.error("cannot read the model repository: %s", e)
            self.loading_done = True
            return
        for problem in problems:
            logger.error("model %s is not served: %s", problem.name, problem.reason)
            self._models[problem.name] = ServedModel(
                problem.name, ModelState.FAILED, reason=problem.reason
            )
        for version in found:
            self._models[version.name] = ServedModel(
                version.name,
                ModelState.LOADING,
                config=version.config,
                version=version.version,
                manifest=version.manifest.model_dump(exclude={"files"}),
            )
        if not found:
            logger.warning("no servable model in %s", self._settings.model_repository)
        await asyncio.gather(*(self._load(v) for v in found))
        self.loading_done = True

    async def _load(self, version: ModelVersion) -> None:
        model = self._models[version.name]
        worker = ModelWorker(version.name, self._settings.workers_per_model)
        started = time.monotonic()
        policy = batch_policy(version.config, self._settings)
        try:
            engine = await worker.call(load_engine, version, session_settings(self._settings))
            if self._settings.warmup:
                await worker.call(engine.warmup, policy.max_batch_size)
        except asyncio.CancelledError:  # shutdown while loading
            worker.shutdown()
            raise
        except Exception as e:
            worker.shutdown()
            model.state, model.reason = ModelState.FAILED, f"{type(e).__name__}: {e}"
            logger.error(
                "model %s version %d failed to load: %s",
                version.name,
                version.version,
                model.reason,
            )
            return

        async def run_batch(payloads: list[Any], key: Hashable) -> list[Any]:
            return await worker.call(engine.run, payloads, key)

        batcher: Batcher[Any, Any] | DecodeScheduler
        if self._steps_decoding(engine):
            assert isinstance(engine, TranslatorEngine)
            batcher = decode_scheduler(version.name, engine, self._settings, self._metrics)
        else:
            batcher = Batcher(
                version.name, run_batch, policy, observer=self._metrics.batch_observer(version.name)
            )
        batcher.start()
        model.engine, model.worker, model.batcher = engine, worker, batcher
        model.provider = engine.provider
        model.state = ModelState.READY
        logger.info(
            "model %s version %d ready on %s in %.2f s (max_batch_size %d, max_batch_tokens %d, "
            "max_queue_delay_ms %.1f, %d worker(s))",
            version.name,
            version.version,
            engine.provider,
            time.monotonic() - started,
            policy.max_batch_size,
            policy.max_batch_tokens,
            policy.max_queue_delay_s * 1000,
            policy.max_concurrent_runs,
        )

    def _steps_decoding(self, engine: Engine) -> bool:
        """Translators decode step by step unless told otherwise or exported before it."""
        if not isinstance(engine, TranslatorEngine):
            return False
        if self._settings.translation_batching != "step":
            return False
        if not engine.generator.has_self_mask:
            logger.warning(
                "translator decoder.onnx has no self_mask input (exported before step "
                "scheduling): request-level batching; re-export to decode step by step"
            )
            return False
        return True

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, timeout_s: float) -> None:
        """Let queued work finish (up to `timeout_s`), then stop every batcher and worker."""
        batchers = [m.batcher for m in self._models.values() if m.batcher]
        await asyncio.gather(*(b.stop(timeout_s) for b in batchers))
        for model in self._models.values():
            if model.worker:
                model.worker.shutdown()


def decode_scheduler(
    name: str, engine: TranslatorEngine, settings: Settings, metrics: ServiceMetrics
) -> DecodeScheduler:
    """The scheduler of a served translator, with the service's settings and metrics."""
    policy = DecodePolicy(
        max_running_sequences=settings.decode_max_running_sequences,
        max_cache_tokens=settings.decode_max_cache_tokens,
        max_queue_size=settings.max_queue_size,
    )
    return DecodeScheduler(
        name,
        engine.decode_batch(),
        policy,
        finish=engine.finish,
        max_steps=engine.generator.max_steps,
        observer=metrics.decode_observer(name),
    )
