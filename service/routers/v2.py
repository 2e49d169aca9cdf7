"""Open Inference Protocol (KServe V2) server and model routes, so Triton/KServe clients such as
`tritonclient.http` work unchanged.

Tensors: `sentiment`-like models take `text` BYTES [N] (or [N, 1]); NLI models take `premise` and
`hypothesis` BYTES [N]; both return `label` BYTES [N] and `probabilities` FP32 [N, C]. Translation
models take `text` and return `translation` BYTES [N], with request parameters `beam_size` and
`max_new_tokens`. `/infer` reads the raw body itself: tritonclient sends no Content-Type, and with
the binary tensor extension the body is JSON followed by raw bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

import service
from service import oip
from service.dependencies import (
    InferenceDep,
    InfoDep,
    StateDep,
    disconnect_watcher,
    require_api_key,
)
from service.errors import ErrorKind, ServiceError, shorten
from service.registry import ServedModel
from service.repository import ModelConfig
from service.schemas import (
    ERROR_RESPONSES,
    V2InferResponse,
    V2ModelMetadata,
    V2ModelReady,
    V2ServerMetadata,
    V2Tensor,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
models_router = APIRouter(
    prefix="/v2/models",
    tags=["open inference protocol"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)

INPUTS = {
    "text-classification": ("text",),
    "text-pair-classification": ("premise", "hypothesis"),
    "translation": ("text",),
}


@router.get("", summary="Server metadata")
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(
        name="nlpserve", version=service.__version__, extensions=["binary_tensor_data"]
    )


def _config(model: ServedModel) -> ModelConfig:
    if model.config is None:
        raise ServiceError(
            ErrorKind.NOT_READY, f"model {model.name!r} failed to load (see the server log)"
        )
    return model.config


def _metadata(model: ServedModel) -> V2ModelMetadata:
    config = _config(model)
    inputs = [V2Tensor(name=n, datatype="BYTES", shape=[-1]) for n in INPUTS[config.task]]
    if config.task == "translation":
        outputs = [V2Tensor(name="translation", datatype="BYTES", shape=[-1])]
    else:
        assert config.labels is not None
        outputs = [
            V2Tensor(name="label", datatype="BYTES", shape=[-1]),
            V2Tensor(name="probabilities", datatype="FP32", shape=[-1, len(config.labels)]),
        ]
    return V2ModelMetadata(
        name=model.name,
        versions=[model.version_str] if model.version_str else [],
        platform="onnxruntime_onnx",
        inputs=inputs,
        outputs=outputs,
    )


@models_router.get("/{name}", summary="Model metadata")
async def model_metadata(name: str, inference: InferenceDep) -> V2ModelMetadata:
    return _metadata(inference.model_by_name(name))


@models_router.get("/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(
    name: str, version: str, inference: InferenceDep
) -> V2ModelMetadata:
    return _metadata(inference.model_by_name(name, version))


def _ready(model: ServedModel, state: Any) -> Response:
    if model.ready and not state.lifecycle.draining:
        return Response(
            V2ModelReady(name=model.name, ready=True).model_dump_json(),
            media_type="application/json",
        )
    raise ServiceError(ErrorKind.NOT_READY, f"model {model.name!r} is not ready")


@models_router.get("/{name}/ready", summary="Model readiness", response_model=V2ModelReady)
async def model_ready(name: str, inference: InferenceDep, state: StateDep) -> Response:
    return _ready(inference.model_by_name(name), state)


@models_router.get(
    "/{name}/versions/{version}/ready",
    summary="Model readiness (one version)",
    response_model=V2ModelReady,
)
async def model_version_ready(
    name: str, version: str, inference: InferenceDep, state: StateDep
) -> Response:
    return _ready(inference.model_by_name(name, version), state)


_INPUT_SCHEMA = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "example": "BYTES"},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON, or (binary tensor extension) the JSON header followed by the tensor "
        "bytes, with Inference-Header-Content-Length giving the header's length",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _INPUT_SCHEMA},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
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
async def infer(name: str, request: Request, inference: InferenceDep, info: InfoDep) -> Response:
    return await _infer(inference.model_by_name(name), request, inference, info)


@models_router.post(
    "/{name}/versions/{version}/infer",
    summary="Inference (one version)",
    response_model=V2InferResponse,
    openapi_extra=INFER_DOC,
)
async def infer_version(
    name: str, version: str, request: Request, inference: InferenceDep, info: InfoDep
) -> Response:
    return await _infer(inference.model_by_name(name, version), request, inference, info)


def _int_parameter(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise oip.bad(f"parameter {key!r} must be an integer")
    return value


async def _infer(model: ServedModel, request: Request, inference: Any, info: Any) -> Response:
    info.model = model.name
    config = _config(model)
    body = oip.decompress(
        await request.body(),
        request.headers.get("content-encoding"),
        inference.settings.max_body_bytes,
    )
    parsed = oip.parse_request(body, request.headers.get("inference-header-content-length"))
    oip.check_input_names(parsed, INPUTS[config.task], model.name)
    disconnected = disconnect_watcher(request)
    parameters: dict[str, Any] = {}
    if config.task == "translation":
        texts = oip.text_input(parsed, "text", model.name)
        result = await inference.translate(
            model,
            texts,
            info,
            beam_size=_int_parameter(parsed.parameters, "beam_size"),
            max_new_tokens=_int_parameter(parsed.parameters, "max_new_tokens"),
            disconnected=disconnected,
        )
        outputs = [
            oip.Tensor(
                "translation", "BYTES", [len(texts)], np.array(result.translations, dtype=object)
            )
        ]
    else:
        if config.task == "text-pair-classification":
            premises = oip.text_input(parsed, "premise", model.name)
            hypotheses = oip.text_input(parsed, "hypothesis", model.name)
            if len(premises) != len(hypotheses):
                raise oip.bad(
                    f"premise has {len(premises)} elements but hypothesis has {len(hypotheses)}"
                )
            result = await inference.nli(
                model, list(zip(premises, hypotheses, strict=True)), info, disconnected
            )
        else:
            texts = oip.text_input(parsed, "text", model.name)
            result = await inference.classify(model, texts, info, disconnected)
        n = len(result.probabilities)
        labels = [result.best(i)[0] for i in range(n)]
        probabilities = np.stack(result.probabilities).astype(np.float32)
        outputs = [
            oip.Tensor("label", "BYTES", [n], np.array(labels, dtype=object)),
            oip.Tensor("probabilities", "FP32", [n, len(result.labels)], probabilities.reshape(-1)),
        ]
    if result.truncated:
        parameters["truncated_inputs"] = ",".join(str(i) for i in result.truncated)
    content, headers = oip.encode_response(
        parsed, model.name, model.version_str, outputs, parameters
    )
    return Response(content, headers=headers)


@models_router.api_route("/{path:path}", methods=["GET", "POST"], include_in_schema=False)
async def unknown_model_route(path: str) -> None:
    """Any other path under /v2/models (e.g. a model name holding "/"): a protocol-style 404."""
    where = shorten("/v2/models/" + path)
    raise ServiceError(ErrorKind.NOT_FOUND, f"unknown model or route {where}")
