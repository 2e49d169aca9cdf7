"""POST /v1/nli: natural language inference on premise/hypothesis pairs."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.dependencies import InfoDep, StateDep, disconnect_watcher
from service.schemas import ERROR_RESPONSES, ClassifyResponse, NliRequest

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("/nli", summary="Classify premise/hypothesis pairs")
async def nli(
    body: NliRequest, request: Request, state: StateDep, info: InfoDep
) -> ClassifyResponse:
    model = state.registry.for_task("text-pair-classification", body.model, body.version)
    pairs = [(p.premise, p.hypothesis) for p in body.pairs]
    result = await state.inference.nli(model, pairs, info, disconnect_watcher(request))
    return ClassifyResponse.from_result(result)
