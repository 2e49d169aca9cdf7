"""POST /v1/classify: sentiment (or any text-classification model)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.dependencies import InferenceDep, InfoDep, disconnect_watcher
from service.schemas import ERROR_RESPONSES, ClassifyRequest, ClassifyResponse

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("/classify", summary="Classify texts")
async def classify(
    body: ClassifyRequest, request: Request, inference: InferenceDep, info: InfoDep
) -> ClassifyResponse:
    model = inference.model_for_task("text-classification", body.model, body.version)
    result = await inference.classify(model, body.texts, info, disconnect_watcher(request))
    return ClassifyResponse.from_result(result)
