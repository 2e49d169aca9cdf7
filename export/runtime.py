"""ONNX Runtime sessions for export checks and the benchmark (CPU unless asked otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.text_inputs import Batch


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
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if provider == "cuda"
        else ["CPUExecutionProvider"]
    )
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def input_names(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs()]


def classifier_logits(session: ort.InferenceSession, batch: Batch) -> np.ndarray:
    """(B, num_labels) float32 logits; feeds only the inputs the graph declares."""
    (logits,) = session.run(["logits"], batch.feeds(input_names(session)))
    return np.asarray(logits, dtype=np.float32)
