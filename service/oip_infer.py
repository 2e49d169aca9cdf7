"""One Open Inference Protocol inference, whatever the transport (HTTP or gRPC): a decoded
request's tensors in, the output tensors and response parameters out, through the service's one
shared inference path (`InferenceService`). The tensors each task's models take are checked and
read here (`check_input_names`, `text_input`); the wire format is service/oip.py's (HTTP) and
service/grpc_codec.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service import oip
from service.errors import ErrorKind, ServiceError, shorten
from service.inference import InferenceService
from service.oip_models import INPUTS, config_of
from service.request_info import RequestInfo
from service.served_model import Disconnected, ServedModel
from service.text_checks import unencodable


def _int_parameter(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise oip.bad(f"parameter {key!r} must be an integer")
    return value


async def run(
    inference: InferenceService,
    model: ServedModel,
    request: oip.InferRequest,
    info: RequestInfo,
    disconnected: Disconnected | None = None,
) -> tuple[list[oip.Tensor], dict[str, Any]]:
    """(outputs, response parameters) for `request` on `model`."""
    config = config_of(model)
    check_input_names(request, INPUTS[config.task], model.name)
    parameters: dict[str, Any] = {}
    if config.task == "translation":
        texts = text_input(request, "text", model.name)
        translated = await inference.translate(
            model,
            texts,
            info,
            beam_size=_int_parameter(request.parameters, "beam_size"),
            max_new_tokens=_int_parameter(request.parameters, "max_new_tokens"),
            disconnected=disconnected,
        )
        outputs = [
            oip.Tensor(
                "translation",
                "BYTES",
                [len(texts)],
                np.array(translated.translations, dtype=object),
            )
        ]
        truncated = translated.truncated
    else:
        if config.task == "text-pair-classification":
            premises = text_input(request, "premise", model.name)
            hypotheses = text_input(request, "hypothesis", model.name)
            if len(premises) != len(hypotheses):
                raise oip.bad(
                    f"premise has {len(premises)} elements but hypothesis has {len(hypotheses)}"
                )
            result = await inference.nli(
                model, list(zip(premises, hypotheses, strict=True)), info, disconnected
            )
        else:
            texts = text_input(request, "text", model.name)
            result = await inference.classify(model, texts, info, disconnected)
        n = len(result.probabilities)
        labels = [label for label, _ in result.best]
        probabilities = np.stack(result.probabilities).astype(np.float32)
        outputs = [
            oip.Tensor("label", "BYTES", [n], np.array(labels, dtype=object)),
            oip.Tensor("probabilities", "FP32", [n, len(result.labels)], probabilities.reshape(-1)),
        ]
        truncated = result.truncated
    if truncated:
        parameters["truncated_inputs"] = ",".join(str(i) for i in truncated)
    return outputs, parameters


def text_input(request: oip.InferRequest, name: str, model: str) -> list[str]:
    """A BYTES input of shape [N] or [N, 1] as N texts (UTF-8)."""
    tensor = request.inputs.get(name)
    if tensor is None:
        raise oip.bad(f"missing input {name!r} (model {model!r})")
    if tensor.datatype != "BYTES":
        raise oip.bad(f"input {name!r} must be BYTES, got {tensor.datatype}")
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
        raise oip.bad(f"input {name!r} must have shape [N] or [N, 1], got {tensor.shape}")
    texts = []
    for i, x in enumerate(tensor.data.tolist()):
        if isinstance(x, bytes):
            try:
                x = x.decode("utf-8")
            except UnicodeDecodeError:
                raise oip.bad(f"input {name!r} element {i} is not valid UTF-8") from None
        problem = unencodable(x)
        if problem:
            raise ServiceError(ErrorKind.VALIDATION, f"input {name!r} element {i}: {problem}")
        texts.append(x)
    return texts


def check_input_names(request: oip.InferRequest, expected: Sequence[str], model: str) -> None:
    unknown = [n for n in request.inputs if n not in expected]
    if unknown:
        raise oip.bad(
            f"unknown input {shorten(unknown[0])}; model {model!r} takes {', '.join(expected)}"
        )
    missing = [n for n in expected if n not in request.inputs]
    if missing:
        raise oip.bad(f"missing input {missing[0]!r}; model {model!r} takes {', '.join(expected)}")
