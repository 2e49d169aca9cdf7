"""The Open Inference Protocol routes and codec (binary tensor extension included), in process.

Requests are built byte by byte the way tritonclient builds them: a JSON header, then the raw
tensors, with Inference-Header-Content-Length and no Content-Type.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import oip


@pytest.fixture(scope="module")
def client(app_client: Callable[..., Any]) -> Iterator[TestClient]:
    with app_client() as c:
        yield c


def bytes_tensor(*texts: str) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def binary_request(
    inputs: list[tuple[dict[str, Any], bytes]], **header: Any
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) with every input sent as binary data."""
    specs = []
    for spec, blob in inputs:
        specs.append({**spec, "parameters": {"binary_data_size": len(blob)}})
    head = json.dumps({"inputs": specs, **header}).encode()
    body = head + b"".join(blob for _, blob in inputs)
    return body, {"Inference-Header-Content-Length": str(len(head))}


def split_response(response: Any) -> tuple[dict[str, Any], bytes]:
    length = response.headers.get("inference-header-content-length")
    if length is None:
        return response.json(), b""
    n = int(length)
    return json.loads(response.content[:n]), response.content[n:]


def assert_v2_error(response: Any, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body  # the protocol's exact error shape
    for needle in needles:
        assert needle in body["error"], body


def test_server_and_model_metadata(client: TestClient) -> None:
    """/v2 lists the binary extension; model metadata declares the tensors per task."""
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    meta = client.get("/v2/models/nli").json()
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in meta["inputs"]] == ["premise", "hypothesis"]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "label": [-1],
        "probabilities": [-1, 3],
    }
    assert client.get("/v2/models/translator/versions/1").json()["outputs"][0]["name"] == (
        "translation"
    )


def test_model_ready_and_versions(client: TestClient) -> None:
    """Ready models answer 200 with or without their version; other versions are 404."""
    assert client.get("/v2/models/sentiment/ready").status_code == 200
    assert client.get("/v2/models/sentiment/versions/1/ready").json() == {
        "name": "sentiment",
        "ready": True,
    }
    assert_v2_error(client.get("/v2/models/sentiment/versions/2/ready"), 404, "no version '2'")
    assert_v2_error(client.get("/v2/models/sentiment/versions/abc"), 404)


def test_json_infer(client: TestClient) -> None:
    """A pure JSON request (nested [N, 1] data) gets JSON outputs, echoing the id."""
    request = {
        "id": "42",
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}],
    }
    r = client.post("/v2/models/sentiment/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "42" and body["model_name"] == "sentiment" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["shape"] == [2] and len(outputs["label"]["data"]) == 2
    probs = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_binary_infer_without_content_type(client: TestClient) -> None:
    """Binary inputs (no Content-Type, like tritonclient) and binary outputs when asked."""
    body, headers = binary_request(
        [
            ({"name": "premise", "shape": [2], "datatype": "BYTES"}, bytes_tensor("a", "b c")),
            ({"name": "hypothesis", "shape": [2], "datatype": "BYTES"}, bytes_tensor("d", "")),
        ],
        parameters={"binary_data_output": True},
    )
    r = client.post("/v2/models/nli/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    header, blob = split_response(r)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sum(sizes) == len(blob)
    labels = oip.deserialize_bytes(blob[: sizes[0]])
    probs = np.frombuffer(blob[sizes[0] :], dtype="<f4").reshape(2, 3)
    assert all(label in (b"entailment", b"neutral", b"contradiction") for label in labels)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_requested_outputs_choose_json_or_binary(client: TestClient) -> None:
    """Only requested outputs come back, each binary or JSON as its parameters say."""
    body, headers = binary_request(
        [({"name": "text", "shape": [1], "datatype": "BYTES"}, bytes_tensor("fine"))],
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
    )
    header, blob = split_response(
        client.post("/v2/models/sentiment/infer", content=body, headers=headers)
    )
    names = [o["name"] for o in header["outputs"]]
    assert names == ["probabilities", "label"]
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8 == len(blob)
    assert header["outputs"][1]["data"][0] in ("negative", "positive")


def test_translator_parameters(client: TestClient) -> None:
    """Translator infer takes beam_size / max_new_tokens request parameters."""
    request = {
        "parameters": {"beam_size": 1, "max_new_tokens": 3},
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["A dog."]}],
    }
    r = client.post("/v2/models/translator/versions/1/infer", json=request)
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    assert output["name"] == "translation" and isinstance(output["data"][0], str)
    bad = {**request, "parameters": {"beam_size": "wide"}}
    assert_v2_error(client.post("/v2/models/translator/infer", json=bad), 400, "beam_size")


def test_gzip_request_body(client: TestClient) -> None:
    """A gzip Content-Encoding body (tritonclient's request compression) is accepted."""
    request = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}
    r = client.post(
        "/v2/models/sentiment/infer",
        content=gzip.compress(json.dumps(request).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text


def text_input(**overrides: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"], **overrides}]
    }


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed JSON", {"content": b'{"inputs": ['}, 400, "not valid JSON"),
    ("not an object", {"json": [1, 2]}, 400, "JSON object"),
    ("no inputs", {"json": {"inputs": []}}, 400, "'inputs'"),
    ("wrong datatype", {"json": text_input(datatype="FP32", data=[1.0])}, 400, "must be BYTES"),
    ("unknown datatype", {"json": text_input(datatype="STRING")}, 400, "unknown datatype"),
    ("shape/data mismatch", {"json": text_input(shape=[2])}, 400, "shape holds 2"),
    ("negative dim", {"json": text_input(shape=[-1])}, 400, "non-negative"),
    ("3-D text", {"json": text_input(shape=[1, 1, 1], data=[[["x"]]])}, 400, "shape [N] or [N, 1]"),
    ("number as text", {"json": text_input(data=[5])}, 400, "strings"),
    (
        "unknown input",
        {"json": {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}},
        400,
        "unknown input",
    ),
    (
        "unknown output",
        {"json": {**text_input(), "outputs": [{"name": "logits"}]}},
        400,
        "unknown output",
    ),
    ("empty batch", {"json": text_input(shape=[0], data=[])}, 422, "no inputs"),
    (
        "too many texts",
        {"json": text_input(shape=[65], data=["x"] * 65)},
        413,
        "max_items_per_request",
    ),
    ("FP16 as JSON", {"json": text_input(datatype="FP16", data=[1.0])}, 400, "binary"),
    (
        "bad header length",
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "raw binary",
        {"content": b"abc", "headers": {"Inference-Header-Content-Length": "0"}},
        400,
        "raw binary",
    ),
    ("bad gzip", {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "gzip"),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "needle"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_v2_requests_are_4xx_with_messages(
    client: TestClient, case: str, request_kwargs: dict[str, Any], status: int, needle: str
) -> None:
    """Malformed or mistyped V2 requests answer {"error": ...} with a 4xx."""
    assert_v2_error(client.post("/v2/models/sentiment/infer", **request_kwargs), status, needle)


@pytest.mark.parametrize(
    ("case", "blob", "size", "needle"),
    [
        ("size past the end", bytes_tensor("abc"), 100, "runs past the end"),
        (
            "element past the end",
            struct.pack("<I", 50) + b"abc",
            7,
            "runs past the end of its data",
        ),
        ("truncated length", b"\x01\x00", 2, "truncated BYTES element length"),
        ("bytes left over", bytes_tensor("a") + b"zz", 5, "bytes after the binary inputs"),
        ("invalid UTF-8", bytes_tensor("x")[:4] + b"\xff", 5, "not valid UTF-8"),
        ("count mismatch", bytes_tensor("a", "b"), 10, "binary data has 2"),
    ],
)
def test_malformed_binary_is_400(
    client: TestClient, case: str, blob: bytes, size: int, needle: str
) -> None:
    """Broken binary tensor data is a 400 naming the problem, never a 5xx."""
    spec = {
        "name": "text",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": size},
    }
    head = json.dumps({"inputs": [spec]}).encode()
    r = client.post(
        "/v2/models/sentiment/infer",
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert_v2_error(r, 400, needle)


def test_numeric_binary_tensors_decode_little_endian() -> None:
    """The codec reads numeric binary tensors as little-endian row-major data."""
    values = np.array([[1, -2], [3, 40000]], dtype="<i4")
    blob = values.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 2],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    parsed = oip.parse_request(head + blob, str(len(head)))
    assert parsed.inputs["x"].data.tolist() == [1, -2, 3, 40000]


def test_unknown_model_is_a_protocol_404(client: TestClient) -> None:
    """Unknown models (also names holding '/') give the protocol's 404 error body."""
    request = text_input()
    assert_v2_error(client.post("/v2/models/nope/infer", json=request), 404, "unknown model")
    assert_v2_error(client.post("/v2/models/a%2F..%2Fb/infer", json=request), 404, "unknown model")
    assert_v2_error(client.get("/v2/models/nope/ready"), 404)
