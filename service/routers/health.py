"""Liveness and readiness (the Open Inference Protocol paths, also the Kubernetes probes)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import StateDep

router = APIRouter(prefix="/v2/health", tags=["health"])


# GET and HEAD: probes and load balancers use either (HEAD kept out of the schema: one
# operation per route there).
@router.head("/live", include_in_schema=False)
@router.get("/live", summary="Liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.head("/ready", include_in_schema=False)
@router.get(
    "/ready",
    summary="Readiness: models loaded and warmed up, not draining",
    responses={503: {"description": "not ready (loading, no model ready, or shutting down)"}},
)
async def ready(state: StateDep) -> JSONResponse:
    if state.lifecycle.draining:
        return JSONResponse({"ready": False, "error": "the server is shutting down"}, 503)
    if not state.registry.ready():
        return JSONResponse({"ready": False, "error": "models are not ready"}, 503)
    return JSONResponse({"ready": True})
