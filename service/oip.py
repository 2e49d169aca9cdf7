"""Open Inference Protocol (KServe V2) request/response codec, with the binary tensor extension.

Wire format (../shared/reference/open-inference-protocol.md): a JSON header, optionally followed by
raw tensor bytes when the `Inference-Header-Content-Length` header gives the JSON's length. Each
binary input says its byte count in `parameters.binary_data_size`; blobs follow in input order.
Numeric tensors are little-endian row-major; a BYTES element is a 4-byte little-endian length and
its bytes. Every malformed request is a BAD_REQUEST naming what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ErrorKind, ServiceError, shorten

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
JSON_UNSAFE = ("FP16", "BF16")  # no portable JSON form (the protocol says: binary only)
MAX_DIMS = 8


def bad(message: str) -> ServiceError:
    return ServiceError(ErrorKind.BAD_REQUEST, message)


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # flat; BYTES: object array of bytes (binary) or str (JSON)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request's binary_data_output


@dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, Tensor]
    outputs: list[RequestedOutput] | None
    binary_output_default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ request parsing


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate`, refusing results over `max_bytes` (zip bombs)."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "deflate"):
        raise bad(f"unsupported Content-Encoding {shorten(encoding)}; use gzip or deflate")
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise bad(f"the body is not valid {kind} data: {e}") from None
    if len(out) > max_bytes:
        raise ServiceError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"the decompressed body is over max_body_bytes ({max_bytes} bytes)",
        )
    if not decoder.eof:
        raise bad(f"the {kind} body is truncated")
    return out


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Split the JSON header from the binary blobs and decode every input tensor."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise bad("Inference-Header-Content-Length must be an integer") from None
        if n == 0:
            raise ServiceError(
                ErrorKind.UNSUPPORTED,
                "raw binary requests (Inference-Header-Content-Length: 0) are not supported; "
                "send a JSON header",
            )
        if not 0 < n <= len(body):
            raise bad(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
        header, blob = body[:n], body[n:]
    else:
        header, blob = body, b""
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"the request is not valid JSON: {e}") from None
    except RecursionError:  # thousands of nested [ or {: the decoder gives up, so do we
        raise bad("the request is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise bad("the request must be a JSON object")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad("'id' must be a string")
    parameters = _parameters(doc.get("parameters"), "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad("'inputs' must be a non-empty list")

    inputs: dict[str, Tensor] = {}
    offset = 0
    for position, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, position, blob, offset)
        if tensor.name in inputs:
            raise bad(f"input {shorten(tensor.name)} is given twice")
        inputs[tensor.name] = tensor
        offset += used
    if offset != len(blob):
        raise bad(
            f"the body has {len(blob) - offset} bytes after the binary inputs "
            "(binary_data_size too small?)"
        )
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise bad("parameter 'binary_data_output' must be a boolean")
    return InferRequest(
        request_id, parameters, inputs, _outputs(doc.get("outputs")), binary_default
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{where} 'parameters' must be an object")
    for key, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            raise bad(f"{where} parameter {shorten(key)} must be a string, number or boolean")
    return value


def _outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad("'outputs' must be a list")
    outputs = []
    for raw in value:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise bad("every requested output needs a string 'name'")
        params = _parameters(raw.get("parameters"), f"output {shorten(raw['name'])}")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise bad("output parameter 'binary_data' must be a boolean")
        outputs.append(RequestedOutput(raw["name"], binary))
    return outputs


def _input(raw: Any, position: int, blob: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor and the number of blob bytes it used."""
    if not isinstance(raw, dict):
        raise bad(f"input {position} must be an object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        raise bad(f"input {position} needs a string 'name'")
    where = f"input {shorten(name)}"
    count = check_tensor_spec(datatype, shape, where)
    assert isinstance(datatype, str) and isinstance(shape, list)  # for the type checker
    params = _parameters(raw.get("parameters"), where)
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"{where}: binary_data_size must be a non-negative integer")
        if offset + size > len(blob):
            raise bad(
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"({len(blob) - offset} bytes left)"
            )
        data = from_binary(blob[offset : offset + size], datatype, count, where)
        return Tensor(name, datatype, shape, data), size
    if "data" not in raw:
        raise bad(f"{where} needs 'data' or parameters.binary_data_size")
    if datatype in JSON_UNSAFE:
        raise bad(f"{where}: {datatype} tensors must be sent as binary data")
    return Tensor(name, datatype, shape, _from_json(raw["data"], datatype, count, where)), 0


def check_tensor_spec(datatype: Any, shape: Any, where: str) -> int:
    """Check an input's datatype and shape; the number of elements the shape holds."""
    if datatype == "BF16":
        raise ServiceError(ErrorKind.UNSUPPORTED, f"{where}: BF16 is not supported")
    if datatype not in NUMPY_TYPES:
        raise bad(f"{where}: unknown datatype {shorten(str(datatype))}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise bad(f"{where}: 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    return math.prod(shape)


def _flatten(data: Any, out: list[Any], where: str, depth: int = 0) -> None:
    if depth > MAX_DIMS:
        raise bad(f"{where}: 'data' is nested too deeply")
    for x in data:
        if isinstance(x, list):
            _flatten(x, out, where, depth + 1)
        else:
            out.append(x)


def _from_json(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    flat: list[Any] = []
    if isinstance(data, list):
        _flatten(data, flat, where)
    else:
        flat.append(data)
    if len(flat) != count:
        raise bad(f"{where}: shape holds {count} elements but 'data' has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise bad(f"{where}: BYTES elements must be strings in JSON")
        return np.array(flat, dtype=np.object_)
    if datatype == "BOOL":
        if not all(isinstance(x, bool) for x in flat):
            raise bad(f"{where}: BOOL elements must be true or false")
        return np.array(flat, dtype=np.bool_)
    integer = datatype.startswith(("INT", "UINT"))
    for x in flat:
        if (
            isinstance(x, bool)
            or not isinstance(x, (int, float))
            or (integer and isinstance(x, float))
        ):
            raise bad(
                f"{where}: {datatype} elements must be {'integers' if integer else 'numbers'}"
            )
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.array(flat, dtype=NUMPY_TYPES[datatype])
    except (OverflowError, FloatingPointError):
        raise bad(f"{where}: a value is out of range for {datatype}") from None


def from_binary(blob: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    """A flat tensor from its raw little-endian bytes (BYTES: length-prefixed elements)."""
    if datatype == "BYTES":
        items = deserialize_bytes(blob, where)
        if len(items) != count:
            raise bad(f"{where}: shape holds {count} elements but the binary data has {len(items)}")
        return np.array(items, dtype=np.object_)
    dtype = np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")
    if len(blob) != count * dtype.itemsize:
        raise bad(
            f"{where}: shape {count} x {dtype.itemsize} bytes does not match "
            f"binary_data_size {len(blob)}"
        )
    return np.frombuffer(blob, dtype=dtype)


def deserialize_bytes(blob: bytes, where: str = "input") -> list[bytes]:
    """BYTES elements from `<uint32 little-endian length><bytes>` records."""
    items, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise bad(f"{where}: truncated BYTES element length at byte {i}")
        (n,) = struct.unpack_from("<I", blob, i)
        i += 4
        if i + n > len(blob):
            raise bad(f"{where}: a BYTES element of {n} bytes runs past the end of its data")
        items.append(blob[i : i + n])
        i += n
    return items


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# ------------------------------------------------------------------------------ response


def encode_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    outputs: Sequence[Tensor],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers; binary where the request asked for it."""
    chosen = choose_outputs(request, model_name, outputs)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        header["id"] = request.id
    if parameters:
        header["parameters"] = parameters
    blobs: list[bytes] = []
    header["outputs"] = []
    for tensor, binary in chosen:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            blob = to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(tensor)
        header["outputs"].append(entry)
    head = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def choose_outputs(
    request: InferRequest, model_name: str, outputs: Sequence[Tensor]
) -> list[tuple[Tensor, bool]]:
    """The outputs the request asked for (all by default), each with whether to send it binary."""
    available = {t.name: t for t in outputs}
    if request.outputs is None:
        return [(t, request.binary_output_default) for t in outputs]
    chosen = []
    for wanted in request.outputs:
        tensor = available.get(wanted.name)
        if tensor is None:
            raise bad(
                f"unknown output {shorten(wanted.name)}; "
                f"model {model_name!r} has {', '.join(available)}"
            )
        binary = request.binary_output_default if wanted.binary is None else wanted.binary
        chosen.append((tensor, binary))
    return chosen


def to_binary(tensor: Tensor) -> bytes:
    """A tensor's raw little-endian bytes (BYTES: length-prefixed elements)."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(
            [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in tensor.data.tolist()]
        )
    return np.ascontiguousarray(
        tensor.data, dtype=np.dtype(NUMPY_TYPES[tensor.datatype]).newbyteorder("<")
    ).tobytes()


def _to_json(tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [x.decode("utf-8") if isinstance(x, bytes) else x for x in tensor.data.tolist()]
    return tensor.data.reshape(-1).tolist()
