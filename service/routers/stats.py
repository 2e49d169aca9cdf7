"""GET /v1/stats: live per-model numbers (the playground's panel polls it once a second).

Behind the API keys like every /v1 route (service/auth.py), unlike /metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.dependencies import StateDep

router = APIRouter(prefix="/v1", tags=["operations"])


@router.get("/stats", summary="Requests/s, latency, queue and batching per model, last seconds")
async def stats(state: StateDep) -> dict[str, Any]:
    depths = [(m.name, m.queue_depth) for m in state.registry.models()]
    return state.metrics.live.summary(depths)
