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


def load_engine(version: ModelVersion, settings: SessionSettings) -> Engine:
    if version.config.task == "translation":
        return TranslatorEngine(version, settings)
    return ClassifierEngine(version, settings)
