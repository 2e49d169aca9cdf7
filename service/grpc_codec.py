"""Open Inference Protocol over gRPC: `ModelInferRequest` in, `ModelInferResponse` out, through
the same decoded form (`oip.InferRequest`, `oip.Tensor`) and checks the HTTP codec uses.

The messages are the protocol's published ones: the code protoc generated from Triton's
grpc_service.proto, as the maintained `tritonclient` package ships it. An input comes either in
`raw_input_contents` (what tritonclient sends: little-endian bytes, BYTES as length-prefixed
elements) or in its typed `contents`; outputs always go back raw, as Triton's server sends them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from service import oip
from service.errors import shorten

# The typed `contents` field that holds each datatype (InferTensorContents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """An InferParameter (or ModelRepositoryParameter) as a plain Python value."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _parameters(entries: Any, where: str) -> dict[str, Any]:
    values = {key: parameter_value(value) for key, value in entries.items()}
    for key, value in values.items():
        if value is None:
            raise oip.bad(f"{where} parameter {shorten(key)} has no value")
    return values


def decode_request(request: service_pb2.ModelInferRequest) -> oip.InferRequest:
    """The request's tensors decoded and checked; BAD_REQUEST naming what is wrong."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise oip.bad(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    if not request.inputs:
        raise oip.bad("'inputs' must be a non-empty list")
    inputs: dict[str, oip.Tensor] = {}
    for position, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise oip.bad(f"input {position} needs a name")
        where = f"input {shorten(tensor.name)}"
        shape = list(tensor.shape)
        count = oip.check_tensor_spec(tensor.datatype, shape, where)
        _parameters(tensor.parameters, where)
        if raw:
            data = oip.from_binary(raw[position], tensor.datatype, count, where)
        else:
            data = _from_contents(tensor, count, where)
        if tensor.name in inputs:
            raise oip.bad(f"input {shorten(tensor.name)} is given twice")
        inputs[tensor.name] = oip.Tensor(tensor.name, tensor.datatype, shape, data)
    outputs = None
    if request.outputs:
        outputs = [oip.RequestedOutput(o.name, True) for o in request.outputs]
    return oip.InferRequest(
        request.id or None,
        _parameters(request.parameters, "request"),
        inputs,
        outputs,
        binary_output_default=True,
    )


def _from_contents(tensor: Any, count: int, where: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:  # FP16: no typed field in the protocol
        raise oip.bad(f"{where}: {tensor.datatype} tensors must be sent in raw_input_contents")
    values = list(getattr(tensor.contents, field))
    if len(values) != count:
        raise oip.bad(f"{where}: shape holds {count} elements but contents has {len(values)}")
    if tensor.datatype == "BYTES":
        return np.array(values, dtype=np.object_)
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.array(values, dtype=oip.NUMPY_TYPES[tensor.datatype])
    except (OverflowError, FloatingPointError):
        raise oip.bad(f"{where}: a value is out of range for {tensor.datatype}") from None


def _parameter(value: Any) -> service_pb2.InferParameter:
    if isinstance(value, bool):
        return service_pb2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return service_pb2.InferParameter(int64_param=value)
    if isinstance(value, float):
        return service_pb2.InferParameter(double_param=value)
    return service_pb2.InferParameter(string_param=str(value))


def encode_response(
    request: oip.InferRequest,
    model_name: str,
    model_version: str,
    outputs: list[oip.Tensor],
    parameters: dict[str, Any],
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    for key, value in parameters.items():
        response.parameters[key].CopyFrom(_parameter(value))
    for tensor, _ in oip.choose_outputs(request, model_name, outputs):
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(oip.to_binary(tensor))
    return response
