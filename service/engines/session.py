"""ONNX Runtime sessions: the one factory that makes them, and the worker threads they run on.

`create_session` is the only place a session is created: the service's engines, the translator's
generator (service/engines/generation.py) and export's checks and benchmarks (export/runtime.py)
all use it, so providers, threads, graph optimisation and spinning are set the same way
everywhere. Every model version gets one `ModelWorker`: the threads that create the model's
sessions and run every inference on them, so inference never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import onnxruntime as ort

logger = logging.getLogger(__name__)

T = TypeVar("T")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderError(RuntimeError):
    """The requested execution provider cannot run here."""


@dataclass(frozen=True)
class SessionSettings:
    providers: Literal["cpu", "cuda", "auto"] = "auto"
    intra_op_threads: int = 1
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    allow_spinning: bool = True  # idle worker threads spin: lower latency, more CPU
    # spinning stops when the last concurrent run returns (restarts with the next): the
    # workers spin inside a run, where they hand operators to each other, not between runs,
    # where they would take the cores from the event loop and the tokenizer
    spin_only_during_runs: bool = True
    cuda_device_id: int = 0


def _options(settings: SessionSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1  # graphs here are sequential; parallelism is intra-op
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[settings.graph_optimization_level]
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    if settings.spin_only_during_runs:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not our log
    return options


_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    """Provider fallbacks are the same for every session: say so once per process."""
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


def create_session(
    model: bytes | str | Path, settings: SessionSettings
) -> tuple[ort.InferenceSession, str]:
    """A session for `model` (ONNX bytes or a file) and the provider it really runs on.

    cpu: CPU. cuda: CUDA or ProviderError. auto: CUDA when onnxruntime has it and a session
    really comes up on it, else CPU, with the reason logged.
    """
    options = _options(settings)
    if isinstance(model, Path):
        model = str(model)
    if settings.providers == "cpu":
        return ort.InferenceSession(model, options, providers=[CPU]), CPU
    cuda = (CUDA, {"device_id": settings.cuda_device_id})
    if CUDA not in ort.get_available_providers():
        reason = "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
        if settings.providers == "cuda":
            raise ProviderError(f"providers=cuda but {reason}")
        _log_once(logging.INFO, f"providers=auto: using CPU because {reason}")
        return ort.InferenceSession(model, options, providers=[CPU]), CPU
    try:
        session = ort.InferenceSession(model, options, providers=[cuda, CPU])
    except Exception as e:  # a broken CUDA install fails here, not at import
        if settings.providers == "cuda":
            raise ProviderError(f"providers=cuda but CUDA failed: {e}") from e
        _log_once(logging.WARNING, f"providers=auto: using CPU because CUDA failed: {e}")
        return ort.InferenceSession(model, options, providers=[CPU]), CPU
    active = session.get_providers()[0]
    if active != CUDA:  # ORT falls back silently when no GPU is usable
        if settings.providers == "cuda":
            raise ProviderError("providers=cuda but ONNX Runtime could not use a GPU")
        _log_once(logging.WARNING, "providers=auto: using CPU: ONNX Runtime could not use a GPU")
    return session, active


class SessionsReleased(RuntimeError):
    """A session that was released (`released_session`) was asked to run: a bug in the caller."""


class _ReleasedSession:
    """Stands in for a released session: every use of it raises."""

    def __getattr__(self, name: str) -> Any:
        raise SessionsReleased(f"the session was released; {name!r} is gone with it")


def released_session() -> ort.InferenceSession:
    """What holds a session's place once it is dropped (its memory handed back)."""
    return cast(ort.InferenceSession, _ReleasedSession())


def is_released(session: ort.InferenceSession) -> bool:
    return isinstance(session, _ReleasedSession)


class ModelWorker:
    """The threads that run a model's sessions; `call` runs a function there, off the loop.

    ONNX Runtime's `run` is thread-safe, so `threads` > 1 lets several batches share one session
    (one copy of the weights). On a small CPU, two one-thread runs side by side beat one
    two-thread run: no barrier per operator waiting on a thread the HTTP side pre-empted.
    """

    def __init__(self, name: str, threads: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"ort-{name}")

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Let the current call finish; queued calls are dropped (their callers are gone)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
