"""The Open Inference Protocol's model repository extension (Triton's paths):
`POST /v2/repository/index`, `POST /v2/repository/models/{name}/load|unload`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.dependencies import StateDep, require_api_key
from service.errors import ErrorKind, ServiceError
from service.oip_models import repository_index
from service.schemas import ERROR_RESPONSES

router = APIRouter(
    prefix="/v2/repository",
    tags=["open inference protocol"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)


async def _json_body(request: Request) -> dict[str, Any]:
    """The optional JSON body (tritonclient sends none, or `{}`, or `{"ready": true}`)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ServiceError(ErrorKind.BAD_REQUEST, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ServiceError(ErrorKind.BAD_REQUEST, "the body must be a JSON object")
    return body


@router.post("/index", summary="Every model of the repository and its state")
async def index(request: Request, state: StateDep) -> list[dict[str, Any]]:
    ready = (await _json_body(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise ServiceError(ErrorKind.BAD_REQUEST, "'ready' must be a boolean")
    return repository_index(state.registry, state.settings.model_repository, ready)


async def _no_parameters(request: Request) -> None:
    parameters = (await _json_body(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ServiceError(ErrorKind.BAD_REQUEST, "'parameters' must be an object")
    # tritonclient sends unload_dependents on every unload; with no ensembles it changes nothing.
    if set(parameters) - {"unload_dependents"}:
        raise ServiceError(
            ErrorKind.UNSUPPORTED,
            "load/unload parameters (config or file overrides) are not supported",
        )


@router.post("/models/{name}/load", summary="Load a model (model_control_mode explicit)")
async def load(name: str, request: Request, state: StateDep) -> Response:
    await _no_parameters(request)
    await state.control.load(name)
    return Response(status_code=200)


@router.post("/models/{name}/unload", summary="Unload a model (model_control_mode explicit)")
async def unload(name: str, request: Request, state: StateDep) -> Response:
    await _no_parameters(request)
    await state.control.unload(name)
    return Response(status_code=200)
