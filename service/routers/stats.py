"""GET /v1/stats: live per-model numbers (the playground's panel polls it once a second).

Behind the API keys like every /v1 route (service/auth.py), unlike /metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.dependencies import StateDep
from service.served_model import LoadedModel

router = APIRouter(prefix="/v1", tags=["operations"])


@router.get("/stats", summary="Requests/s, latency, queue and batching per model, last seconds")
async def stats(state: StateDep) -> dict[str, Any]:
    models = state.registry.models()  # the default version of each
    depths = [(m.name, m.queue_depth) for m in models]
    stepped = [m.name for m in models if isinstance(m, LoadedModel) and m.step_scheduled]
    return state.metrics.live.summary(depths, stepped)
