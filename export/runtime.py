"""ONNX Runtime sessions for export checks and the benchmark (CPU unless asked otherwise), made
by the service's one session factory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.text_inputs import Batch
from service.engines.session import SessionSettings, create_session


def make_session(
    path: Path | str | bytes,
    threads: int | None = None,
    provider: str = "cpu",
    spinning: bool = True,
) -> ort.InferenceSession:
    """A session with explicit intra-op threads (default: all cores) and full graph optimisation.

    spinning=False lets idle worker threads sleep at once instead of spin-waiting for the next
    run: needed when another engine (PyTorch, a second session) takes turns on the same cores.
    """
    settings = SessionSettings(
        providers="cuda" if provider == "cuda" else "cpu",
        intra_op_threads=threads or (os.cpu_count() or 1),
        allow_spinning=spinning,
    )
    session, _ = create_session(path if isinstance(path, bytes) else Path(path), settings)
    return session


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def input_names(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs()]


def classifier_logits(session: ort.InferenceSession, batch: Batch) -> np.ndarray:
    """(B, num_labels) float32 logits; feeds only the inputs the graph declares."""
    (logits,) = session.run(["logits"], batch.feeds(input_names(session)))
    return np.asarray(logits, dtype=np.float32)
