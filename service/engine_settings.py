"""The ONNX Runtime options every engine is opened with, from the service's settings (the
engines themselves never read `Settings`: the peers' benchmark environments load them)."""

from __future__ import annotations

from service.engines.session import SessionSettings
from service.settings import Settings


def session_settings(settings: Settings) -> SessionSettings:
    return SessionSettings(
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        graph_optimization_level=settings.graph_optimization_level,
        allow_spinning=settings.allow_spinning,
        spin_only_during_runs=settings.spin_only_during_runs,
        cuda_device_id=settings.cuda_device_id,
    )
