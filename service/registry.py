"""The served models: which versions of which models serve, and the lookups routes use.

`load_all` reads the repository, then loads every selected version of every model concurrently
(each on its own worker thread) and runs its warm-up batch; a version flips to READY only after
that. A version that fails (bad config, checksum mismatch, broken graph, no GPU for
providers=cuda) is FAILED with its reason logged; it never affects the others.

Versions change without a restart (`sync`, driven by `service.model_control`): a new or changed
version is loaded, verified and warmed up beside the serving ones and takes traffic only once
READY; versions its model's policy no longer selects are retired once a selected one serves:
removed from lookups at once, then, after a grace for requests that already resolved them, their
queue drains and their engine is released. A broken new version is reported and the old one
keeps serving. Several versions serve side by side; the highest READY one is the default.

Each version is a `LoadedModel` or an `UnavailableModel` (service/served_model.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from service import heap
from service.engines import Engine, TranslatorEngine
from service.errors import ErrorKind, ServiceError, shorten
from service.metrics import ServiceMetrics
from service.repository import (
    ModelDirectory,
    ModelVersion,
    RepositoryError,
    Task,
    model_directories,
    read_model_versions,
)
from service.served_model import (
    LoadedModel,
    ModelState,
    ServedModel,
    UnavailableModel,
    batch_policy,
    load_on_worker,
)
from service.settings import Settings
from service.translator_scheduling import step_scheduled

logger = logging.getLogger(__name__)


# Between a version leaving lookups and its queue closing: requests that resolved it just before
# (their body still arriving, say) still reach its batcher. Well above one request's handling time
# on a loaded server, small next to a poll interval.
RETIRE_GRACE_S = 2.0


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._versions: dict[str, dict[int, ServedModel]] = {}
        self._broken: dict[str, UnavailableModel] = {}  # model directories that cannot be read
        self._retiring: dict[asyncio.Task[None], LoadedModel] = {}
        # (name, version) -> fingerprint that failed to load; (name, 0) -> the last problem
        # reported for a model directory that cannot be read while its versions keep serving.
        self._failed: dict[tuple[str, int], str] = {}
        self._sync_lock = asyncio.Lock()  # one change of the served set at a time
        self._heap_unsettled = False  # a version loaded since the last heap.settle
        self.loading_done = False

    # ------------------------------------------------------------------ queries

    def models(self) -> list[ServedModel]:
        """The default version of every model (and every model that cannot be read)."""
        defaults = [self._default(name) for name in self._versions]
        broken: list[ServedModel] = [m for n, m in self._broken.items() if n not in self._versions]
        return sorted([m for m in defaults if m is not None] + broken, key=lambda m: m.name)

    def all_versions(self) -> list[ServedModel]:
        """Every loaded, loading or failed version of every model, by name then version."""
        found = [m for versions in self._versions.values() for m in versions.values()]
        broken: list[ServedModel] = [m for n, m in self._broken.items() if n not in self._versions]
        return sorted(found + broken, key=lambda m: (m.name, m.version or 0))

    def versions(self, name: str) -> list[ServedModel]:
        return [m for _, m in sorted(self._versions.get(name, {}).items())]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model's default version (highest READY one), or the given version."""
        if version is not None and (name in self._versions or name in self._broken):
            served = self._versions.get(name, {})
            number = int(version) if version.isdecimal() else None
            if number is None or number not in served:
                listed = ", ".join(str(v) for v in sorted(served)) or "none"
                raise ServiceError(
                    ErrorKind.NOT_FOUND,
                    f"model {shorten(name)} has no version {shorten(version)} (serving {listed})",
                )
            return served[number]
        model = self._default(name) or self._broken.get(name)
        if model is None:
            raise ServiceError(ErrorKind.NOT_FOUND, f"unknown model {shorten(name)}")
        return model

    def for_task(self, task: Task, name: str | None, version: str | None = None) -> ServedModel:
        """The named model (checked to serve `task`), or the only (not failed) model serving it;
        its default version, or `version`."""
        if name is not None:
            model = self.get(name)
            if model.config is not None and model.config.task != task:
                raise ServiceError(
                    ErrorKind.VALIDATION,
                    f"model {shorten(name)} serves {model.config.task}, not {task}",
                )
            return model if version is None else self.get(name, version)
        configured = [m for m in self.models() if m.config is not None and m.config.task == task]
        candidates = [m for m in configured if m.state is not ModelState.FAILED]
        if not candidates and configured:  # configured for the task, but it did not load
            raise ServiceError(
                ErrorKind.NOT_READY,
                f"model {configured[0].name!r} serves {task} but failed to load "
                "(state: failed; see the server log)",
            )
        if not candidates:
            raise ServiceError(ErrorKind.NOT_FOUND, f"no model serves the task {task}")
        if len(candidates) > 1:
            names = ", ".join(sorted(m.name for m in candidates))
            raise ServiceError(
                ErrorKind.VALIDATION,
                f"several models serve {task} ({names}); name one in 'model'",
            )
        return candidates[0] if version is None else self.get(candidates[0].name, version)

    def _default(self, name: str) -> ServedModel | None:
        versions = self.versions(name)
        ready = [m for m in versions if m.ready]
        candidates = ready or [m for m in versions if m.state is ModelState.LOADING] or versions
        return candidates[-1] if candidates else None

    def ready(self) -> bool:
        """Readiness: loading finished and every model (strict) or at least one model ready."""
        if not self.loading_done:
            return False
        states = [m.ready for m in self.models()]
        if self._settings.strict_readiness:
            return bool(states) and all(states)
        return any(states)

    # ------------------------------------------------------------------ loading

    async def load_all(self) -> None:
        """Load every model of the repository; never raises for one model's failure."""
        await self.sync()
        if not self._versions:
            logger.warning("no servable model in %s", self._settings.model_repository)
        self.loading_done = True

    async def sync(self, only: str | None = None, *, prune: bool = False) -> None:
        """Bring the served versions in line with the repository (or with one model directory):
        load new and changed versions, retire those no longer selected, and (`prune`) unload
        models whose directory is gone. Never raises for one model's failure."""
        async with self._sync_lock:
            try:
                directories = await asyncio.to_thread(self._read_repository, only)
            except RepositoryError as e:
                logger.error("cannot read the model repository: %s", e)
                return
            await asyncio.gather(*(self._sync_model(d) for d in directories))
            if self._heap_unsettled:
                # The loads' garbage goes (a translator served by lanes released its sessions)
                # and the new versions' long-lived objects leave the collector's walks.
                self._heap_unsettled = False
                await asyncio.to_thread(heap.settle)
            if prune and only is None:
                for name in set(self._versions) - {d.name for d in directories}:
                    logger.info("model %s left the repository; unloading it", name)
                    for model in self._versions.pop(name).values():
                        self._retire(model, RETIRE_GRACE_S)
                for name in set(self._broken) - {d.name for d in directories}:
                    del self._broken[name]

    def _read_repository(self, only: str | None) -> list[ModelDirectory]:
        pins = self._settings.pinned_versions
        if only is not None:
            return [read_model_versions(self._settings.model_repository / only, pins.get(only))]
        return [
            read_model_versions(d, pins.get(d.name))
            for d in model_directories(self._settings.model_repository)
        ]

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` (each drains before it is released)."""
        async with self._sync_lock:
            for model in self._versions.pop(name, {}).values():
                self._retire(model, grace_s=0.0)
            self._broken.pop(name, None)

    async def _sync_model(self, directory: ModelDirectory) -> None:
        name = directory.name
        served = self._versions.get(name, {})
        if directory.config is None or not directory.selected:
            reason = directory.problem or "no version selected"
            if any(m.ready for m in served.values()):
                if self._failed.get((name, 0)) != reason:  # once, not on every poll
                    logger.error("model %s: %s; its served versions keep serving", name, reason)
                    self._failed[(name, 0)] = reason
            elif self._broken.get(name) is None or self._broken[name].reason != reason:
                logger.error("model %s is not served: %s", name, reason)
                self._broken[name] = UnavailableModel(name, ModelState.FAILED, reason=reason)
            return
        self._broken.pop(name, None)
        self._failed.pop((name, 0), None)
        served = self._versions.setdefault(name, {})
        for number, reason in directory.broken.items():
            if number not in served or not served[number].ready:
                if served.get(number) is None or served[number].reason != reason:
                    logger.error("model %s version %d is not served: %s", name, number, reason)
                served[number] = UnavailableModel(
                    name, ModelState.FAILED, config=directory.config, version=number, reason=reason
                )
        loads = []
        for version in directory.versions:
            current = served.get(version.version)
            if current is not None and current.fingerprint == version.fingerprint:
                continue  # unchanged: serving, loading, or failed until its files change
            if self._failed.get((name, version.version)) == version.fingerprint:
                continue  # a changed version that failed: retried when its files change again
            if current is None or not current.ready:
                served[version.version] = UnavailableModel.loading(version)
            loads.append(self._load(version))
        await asyncio.gather(*loads)
        if any(served[v].ready for v in directory.selected if v in served):
            for number in [v for v in served if v not in directory.selected]:
                self._retire(served.pop(number), RETIRE_GRACE_S)

    async def _load(self, version: ModelVersion) -> None:
        started = time.monotonic()
        try:
            engine, worker = await load_on_worker(version, self._settings)
            model = LoadedModel.start(
                version,
                engine,
                worker,
                self._settings,
                self._metrics,
                step_scheduled=self._steps_decoding(engine),
            )
            try:
                await model.until_serving()
            except BaseException:
                await model.release(drain_timeout_s=0)
                raise
        except asyncio.CancelledError:  # shutdown while loading
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            logger.error(
                "model %s version %d failed to load: %s", version.name, version.version, reason
            )
            self._failed[(version.name, version.version)] = version.fingerprint
            self._keep_failed(
                UnavailableModel(
                    version.name,
                    ModelState.FAILED,
                    config=version.config,
                    version=version.version,
                    reason=reason,
                    manifest=version.manifest.model_dump(exclude={"files"}),
                    fingerprint=version.fingerprint,
                )
            )
            return
        self._swap_in(model)
        self._heap_unsettled = True
        policy = batch_policy(model, version.config, self._settings)
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

    def _swap_in(self, model: LoadedModel) -> None:
        """A READY version takes the place of the one it replaces (changed files), if any."""
        served = self._versions.setdefault(model.name, {})
        previous = served.get(model.version)
        served[model.version] = model
        if previous is not None and previous is not model:
            self._retire(previous, RETIRE_GRACE_S)

    def _keep_failed(self, model: ServedModel) -> None:
        """A failed reload of a serving version is reported; the serving one stays."""
        assert model.version is not None
        served = self._versions.setdefault(model.name, {})
        current = served.get(model.version)
        if current is None or not current.ready:
            served[model.version] = model

    def _retire(self, model: ServedModel, grace_s: float) -> None:
        if not isinstance(model, LoadedModel):
            return  # nothing runs, nothing to release
        task = asyncio.get_running_loop().create_task(self._release(model, grace_s))
        self._retiring[task] = model
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _release(self, model: LoadedModel, grace_s: float) -> None:
        logger.info("model %s version %d retiring", model.name, model.version)
        await asyncio.sleep(grace_s)
        await model.release(self._settings.drain_timeout_s)
        logger.info("model %s version %d released", model.name, model.version)
        # Nothing here holds the version now, so its sessions' memory goes back to the OS now,
        # not with the process.
        task = asyncio.current_task()
        if task is not None:
            self._retiring.pop(task, None)
        del model
        await asyncio.to_thread(heap.settle)

    def _steps_decoding(self, engine: Engine) -> bool:
        """Translators decode step by step unless told otherwise or exported before it."""
        if step_scheduled(engine, self._settings):
            return True
        if isinstance(engine, TranslatorEngine) and self._settings.translation_batching == "step":
            logger.warning(
                "translator decoder.onnx cannot decode rows at different steps (exported "
                "before step scheduling): request-level batching; re-export to decode step by "
                "step"
            )
        return False

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, timeout_s: float) -> None:
        """Let queued work finish (up to `timeout_s`), then stop every queue and worker."""
        retiring = list(self._retiring.values())
        for task in list(self._retiring):  # their grace is over: drain them with the rest
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        loaded = [m for m in self.all_versions() if isinstance(m, LoadedModel)] + retiring
        await asyncio.gather(*(m.release(timeout_s) for m in loaded))
