"""POST /v1/nli: natural language inference on premise/hypothesis pairs."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.context import ServiceState
from service.dependencies import InfoDep, StateDep, disconnect_watcher
from service.request_info import RequestInfo
from service.schemas import ERROR_RESPONSES, ClassifyResponse, NliRequest
from service.served_model import Disconnected

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("/nli", summary="Classify premise/hypothesis pairs")
async def nli(
    body: NliRequest, request: Request, state: StateDep, info: InfoDep
) -> ClassifyResponse:
    return await answer(state, body, info, disconnect_watcher(request))


async def answer(
    state: ServiceState, body: NliRequest, info: RequestInfo, disconnected: Disconnected
) -> ClassifyResponse:
    """The route's answer (the fast lane, service/fast_lane.py, calls it too)."""
    model = state.registry.for_task("text-pair-classification", body.model, body.version)
    pairs = [(p.premise, p.hypothesis) for p in body.pairs]
    result = await state.inference.nli(model, pairs, info, disconnected)
    return ClassifyResponse.from_result(result)
