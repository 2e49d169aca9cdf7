"""One worker thread per model version, where its ONNX Runtime sessions live and run.

Every model version gets one `ModelWorker`: a single thread that creates the model's sessions
(with service/ort_session.py's factory) and runs every inference on them, so a session is never
used from two threads and inference never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


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
