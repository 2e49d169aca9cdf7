"""POST /v1/classify: sentiment (or any text-classification model)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.context import ServiceState
from service.dependencies import InfoDep, StateDep, disconnect_watcher
from service.request_info import RequestInfo
from service.schemas import ERROR_RESPONSES, ClassifyRequest, ClassifyResponse
from service.served_model import Disconnected

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("/classify", summary="Classify texts")
async def classify(
    body: ClassifyRequest, request: Request, state: StateDep, info: InfoDep
) -> ClassifyResponse:
    return await answer(state, body, info, disconnect_watcher(request))


async def answer(
    state: ServiceState, body: ClassifyRequest, info: RequestInfo, disconnected: Disconnected
) -> ClassifyResponse:
    """The route's answer (the fast lane, service/fast_lane.py, calls it too)."""
    model = state.registry.for_task("text-classification", body.model, body.version)
    result = await state.inference.classify(model, body.texts, info, disconnected)
    return ClassifyResponse.from_result(result)
