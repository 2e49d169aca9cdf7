"""POST /v1/classify: sentiment (or any text-classification model)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.dependencies import InfoDep, StateDep, disconnect_watcher
from service.schemas import ERROR_RESPONSES, ClassifyRequest, ClassifyResponse

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("/classify", summary="Classify texts")
async def classify(
    body: ClassifyRequest, request: Request, state: StateDep, info: InfoDep
) -> ClassifyResponse:
    model = state.registry.for_task("text-classification", body.model, body.version)
    result = await state.inference.classify(model, body.texts, info, disconnect_watcher(request))
    return ClassifyResponse.from_result(result)
