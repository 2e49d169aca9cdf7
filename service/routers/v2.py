"""Open Inference Protocol (KServe V2) server and model routes, so Triton/KServe clients such as
`tritonclient.http` work unchanged.

Tensors: `sentiment`-like models take `text` BYTES [N] (or [N, 1]); NLI models take `premise` and
`hypothesis` BYTES [N]; both return `label` BYTES [N] and `probabilities` FP32 [N, C]. Translation
models take `text` and return `translation` BYTES [N], with request parameters `beam_size` and
`max_new_tokens`. `/infer` reads the raw body itself: tritonclient sends no Content-Type, and with
the binary tensor extension the body is JSON followed by raw bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

import service
from service import oip, oip_infer, oip_models
from service.context import ServiceState
from service.dependencies import InfoDep, StateDep, disconnect_watcher, require_api_key
from service.errors import ErrorKind, ServiceError, shorten
from service.request_info import RequestInfo
from service.schemas import (
    ERROR_RESPONSES,
    V2InferResponse,
    V2ModelMetadata,
    V2ModelReady,
    V2ServerMetadata,
)
from service.served_model import Disconnected, ServedModel

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
models_router = APIRouter(
    prefix="/v2/models",
    tags=["open inference protocol"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)


@router.get("", summary="Server metadata")
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(
        name="nlpserve", version=service.__version__, extensions=oip_models.EXTENSIONS
    )


def _metadata(model: ServedModel, state: ServiceState) -> V2ModelMetadata:
    return V2ModelMetadata.model_validate(oip_models.metadata(model, state.registry))


# Declared before /{name}: "stats" is not a model name here.
@models_router.get("/stats", summary="Statistics of every model (statistics extension)")
async def all_statistics(state: StateDep) -> dict[str, Any]:
    return oip_models.statistics(state.registry)


@models_router.get("/{name}", summary="Model metadata")
async def model_metadata(name: str, state: StateDep) -> V2ModelMetadata:
    return _metadata(state.registry.get(name), state)


@models_router.get("/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(name: str, version: str, state: StateDep) -> V2ModelMetadata:
    return _metadata(state.registry.get(name, version), state)


@models_router.get("/{name}/config", summary="Model configuration (Triton's JSON form)")
async def model_config(name: str, state: StateDep) -> dict[str, Any]:
    return oip_models.model_config(state.registry.get(name), state.settings)


@models_router.get("/{name}/versions/{version}/config", summary="Model configuration (one version)")
async def model_version_config(name: str, version: str, state: StateDep) -> dict[str, Any]:
    return oip_models.model_config(state.registry.get(name, version), state.settings)


@models_router.get("/{name}/stats", summary="Statistics of a model's versions")
async def model_statistics(name: str, state: StateDep) -> dict[str, Any]:
    return oip_models.statistics(state.registry, name)


@models_router.get("/{name}/versions/{version}/stats", summary="Statistics of one version")
async def model_version_statistics(name: str, version: str, state: StateDep) -> dict[str, Any]:
    return oip_models.statistics(state.registry, name, version)


def _ready(model: ServedModel, state: ServiceState) -> Response:
    if model.ready and not state.lifecycle.draining:
        return Response(
            V2ModelReady(name=model.name, ready=True).model_dump_json(),
            media_type="application/json",
        )
    raise ServiceError(ErrorKind.NOT_READY, f"model {model.name!r} is not ready")


@models_router.get("/{name}/ready", summary="Model readiness", response_model=V2ModelReady)
async def model_ready(name: str, state: StateDep) -> Response:
    return _ready(state.registry.get(name), state)


@models_router.get(
    "/{name}/versions/{version}/ready",
    summary="Model readiness (one version)",
    response_model=V2ModelReady,
)
async def model_version_ready(name: str, version: str, state: StateDep) -> Response:
    return _ready(state.registry.get(name, version), state)


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    """A JSON schema object with these properties (for the /infer request body's docs)."""
    return {"type": "object", "required": required, "properties": properties}


_STRING, _PARAMETERS = {"type": "string"}, {"type": "object"}
INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON, or (binary tensor extension) the JSON header followed by the tensor "
        "bytes, with Inference-Header-Content-Length giving the header's length",
        "content": {
            "application/json": {
                "schema": _object(
                    ["inputs"],
                    id=_STRING,
                    parameters=_PARAMETERS,
                    inputs={
                        "type": "array",
                        "items": _object(
                            ["name", "shape", "datatype"],
                            name=_STRING,
                            shape={"type": "array", "items": {"type": "integer", "minimum": 0}},
                            datatype={"type": "string", "example": "BYTES"},
                            parameters=_PARAMETERS,
                            data={"type": "array"},
                        ),
                    },
                    outputs={
                        "type": "array",
                        "items": _object(["name"], name=_STRING, parameters=_PARAMETERS),
                    },
                ),
                "example": {
                    "inputs": [
                        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Great film."]}
                    ]
                },
            }
        },
    }
}


@models_router.post(
    "/{name}/infer",
    summary="Inference",
    response_model=V2InferResponse,
    openapi_extra=INFER_DOC,
)
async def infer(name: str, request: Request, state: StateDep, info: InfoDep) -> Response:
    return await _infer(state.registry.get(name), request, state, info)


@models_router.post(
    "/{name}/versions/{version}/infer",
    summary="Inference (one version)",
    response_model=V2InferResponse,
    openapi_extra=INFER_DOC,
)
async def infer_version(
    name: str, version: str, request: Request, state: StateDep, info: InfoDep
) -> Response:
    return await _infer(state.registry.get(name, version), request, state, info)


async def _infer(
    model: ServedModel, request: Request, state: ServiceState, info: InfoDep
) -> Response:
    content, headers = await answer_infer(
        state, model, await request.body(), request.headers, info, disconnect_watcher(request)
    )
    return Response(content, headers=headers)


async def answer_infer(
    state: ServiceState,
    model: ServedModel,
    raw: bytes,
    headers: Mapping[str, str],
    info: RequestInfo,
    disconnected: Disconnected,
) -> tuple[bytes, dict[str, str]]:
    """An infer request's answer: body and headers (the fast lane, service/fast_lane.py, calls
    it too). `headers`: the request's, looked up by lower-case name (Starlette's `Headers`)."""
    info.model = model.name
    oip_models.config_of(model)
    body = oip.decompress(raw, headers.get("content-encoding"), state.settings.max_body_bytes)
    parsed = oip.parse_request(body, headers.get("inference-header-content-length"))
    outputs, parameters = await oip_infer.run(state.inference, model, parsed, info, disconnected)
    return oip.encode_response(parsed, model.name, model.version_str, outputs, parameters)


@models_router.api_route("/{path:path}", methods=["GET", "POST"], include_in_schema=False)
async def unknown_model_route(path: str) -> None:
    """Any other path under /v2/models (e.g. a model name holding "/"): a protocol-style 404."""
    where = shorten("/v2/models/" + path)
    raise ServiceError(ErrorKind.NOT_FOUND, f"unknown model or route {where}")
