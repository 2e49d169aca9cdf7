"""POST /v1/translate: translation with greedy or beam search."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.dependencies import InferenceDep, InfoDep, disconnect_watcher
from service.schemas import ERROR_RESPONSES, TranslateRequest, TranslateResponse

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("/translate", summary="Translate texts")
async def translate(
    body: TranslateRequest, request: Request, inference: InferenceDep, info: InfoDep
) -> TranslateResponse:
    model = inference.model_for_task("translation", body.model, body.version)
    result = await inference.translate(
        model,
        body.texts,
        info,
        beam_size=body.beam_size,
        max_new_tokens=body.max_new_tokens,
        disconnected=disconnect_watcher(request),
    )
    return TranslateResponse(
        model=result.model,
        version=result.version,
        translations=result.translations,
        truncated=result.truncated,
    )
