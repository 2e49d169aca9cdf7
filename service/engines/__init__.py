"""Inference engines: one per model version, run on the model's own worker thread.

`load_engine` is blocking (reads and verifies files, creates ONNX Runtime sessions); call it
through the model's `ModelWorker`, like `run` and `warmup`.
"""

from __future__ import annotations

from service.engines.classifier import ClassifierEngine
from service.engines.session import ModelWorker, SessionSettings, create_session
from service.engines.tokenization import Encoded, TextEncoder
from service.engines.translator import DecodingParams, TranslatorEngine
from service.repository import ModelVersion

Engine = ClassifierEngine | TranslatorEngine

__all__ = [
    "ClassifierEngine",
    "DecodingParams",
    "Encoded",
    "Engine",
    "ModelWorker",
    "SessionSettings",
    "TextEncoder",
    "TranslatorEngine",
    "create_session",
    "load_engine",
]


def load_engine(
    version: ModelVersion, settings: SessionSettings, *, single_thread_runs: bool = False
) -> Engine:
    """`single_thread_runs`: on CPU also open a one-thread session, for the runs put side by side
    (a classifier's batches under load, ClassifierEngine.run_single_thread; a translator's
    decode lanes, TranslatorEngine.decode_batch)."""
    if version.config.task == "translation":
        return TranslatorEngine(version, settings, single_thread_runs=single_thread_runs)
    return ClassifierEngine(version, settings, single_thread_runs=single_thread_runs)
