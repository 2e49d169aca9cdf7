"""One Open Inference Protocol inference, whatever the transport (HTTP or gRPC): a decoded
request's tensors in, the output tensors and response parameters out, through the service's one
shared inference path (`InferenceService`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service import oip
from service.inference import InferenceService
from service.oip_models import INPUTS, config_of
from service.request_info import RequestInfo
from service.served_model import Disconnected, ServedModel


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
    info.model = model.name
    config = config_of(model)
    oip.check_input_names(request, INPUTS[config.task], model.name)
    parameters: dict[str, Any] = {}
    if config.task == "translation":
        texts = oip.text_input(request, "text", model.name)
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
            premises = oip.text_input(request, "premise", model.name)
            hypotheses = oip.text_input(request, "hypothesis", model.name)
            if len(premises) != len(hypotheses):
                raise oip.bad(
                    f"premise has {len(premises)} elements but hypothesis has {len(hypotheses)}"
                )
            result = await inference.nli(
                model, list(zip(premises, hypotheses, strict=True)), info, disconnected
            )
        else:
            texts = oip.text_input(request, "text", model.name)
            result = await inference.classify(model, texts, info, disconnected)
        n = len(result.probabilities)
        labels = [result.best(i)[0] for i in range(n)]
        probabilities = np.stack(result.probabilities).astype(np.float32)
        outputs = [
            oip.Tensor("label", "BYTES", [n], np.array(labels, dtype=object)),
            oip.Tensor("probabilities", "FP32", [n, len(result.labels)], probabilities.reshape(-1)),
        ]
        truncated = result.truncated
    if truncated:
        parameters["truncated_inputs"] = ",".join(str(i) for i in truncated)
    return outputs, parameters
