"""Triton/KServe compatibility end to end: `python -m service` (real uvicorn and the real grpcio
server in one process) against `tritonclient.grpc` and `tritonclient.http`, unchanged.

One server with an API key serves the tiny models over both protocols: inference for all three
models over gRPC (raw BYTES in, labels/probabilities/translations out, the same answers as HTTP),
model configuration, statistics and the repository index over both, and the gRPC status codes of
the protocol's errors. Draining is checked in process (the app's own lifespan runs the gRPC
server), where the drain can be started without racing a process exit.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess, free_port

pytestmark = pytest.mark.timeout(180)

KEY = "triton-compat-key"


def auth() -> dict[str, str]:
    """Fresh each call: tritonclient.http adds its own headers to the dict it is given."""
    return {"authorization": f"Bearer {KEY}"}


TEXTS = np.array([b"I loved it", "ein sch\u00f6ner Film".encode()], dtype=np.object_)


@pytest.fixture(scope="module")
def server(
    model_repository: Path, launch_server: Callable[..., ServerProcess]
) -> Iterator[ServerProcess]:
    grpc_port = free_port()
    server = launch_server(model_repository, grpc_port=grpc_port, api_keys=KEY)
    server.grpc_address = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(server.grpc_address)  # type: ignore[attr-defined]
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: ServerProcess) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(server.address, network_timeout=30)
    yield client
    client.close()


def grpc_input(name: str, data: np.ndarray) -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)  # raw_input_contents, as tritonclient always sends
    return tensor


def http_input(name: str, data: np.ndarray) -> thttp.InferInput:
    tensor = thttp.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def grpc_error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# ------------------------------------------------------------------------------------ gRPC


def test_grpc_server_and_model_metadata(grpc_client: tgrpc.InferenceServerClient) -> None:
    c = grpc_client
    assert c.is_server_live() and c.is_server_ready()
    assert "statistics" in c.get_server_metadata(as_json=True)["extensions"]
    for model in ("sentiment", "nli", "translator"):
        assert c.is_model_ready(model, headers=auth())
        assert c.is_model_ready(model, "1", headers=auth())
        meta = c.get_model_metadata(model, headers=auth(), as_json=True)
        assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    nli = c.get_model_metadata("nli", headers=auth())
    assert [t.name for t in nli.inputs] == ["premise", "hypothesis"]
    assert list(nli.outputs[1].shape) == [-1, 3]


def test_grpc_infer_all_three_models_matches_http(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    """Binary BYTES in over gRPC; the same labels and probabilities as over HTTP."""
    sentiment = grpc_client.infer("sentiment", [grpc_input("text", TEXTS)], headers=auth())
    probabilities = sentiment.as_numpy("probabilities")
    assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    over_http = http_client.infer("sentiment", [http_input("text", TEXTS)], headers=auth())
    assert np.allclose(probabilities, over_http.as_numpy("probabilities"), atol=1e-6)
    assert sentiment.as_numpy("label").tolist() == over_http.as_numpy("label").tolist()
    assert sentiment.get_response().model_version == "1"

    pairs = grpc_client.infer(
        "nli",
        [grpc_input("premise", TEXTS), grpc_input("hypothesis", TEXTS[::-1].copy())],
        headers=auth(),
        model_version="1",
    )
    assert pairs.as_numpy("probabilities").shape == (2, 3)
    assert set(pairs.as_numpy("label").tolist()) <= {b"entailment", b"neutral", b"contradiction"}

    translated = grpc_client.infer(
        "translator",
        [grpc_input("text", TEXTS)],
        parameters={"beam_size": 1, "max_new_tokens": 4},
        outputs=[tgrpc.InferRequestedOutput("translation")],
        headers=auth(),
    )
    texts = translated.as_numpy("translation")
    assert texts.shape == (2,) and all(isinstance(t, bytes) for t in texts)
    same = http_client.infer(
        "translator",
        [http_input("text", TEXTS)],
        parameters={"beam_size": 1, "max_new_tokens": 4},
        headers=auth(),
    )
    assert texts.tolist() == same.as_numpy("translation").tolist()


def test_grpc_typed_contents_are_accepted(server: ServerProcess) -> None:
    """Inputs in `contents.bytes_contents` (not raw) work too: the protocol allows both."""
    with grpc.insecure_channel(server.grpc_address) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="sentiment", id="typed-1")
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2])
        tensor.contents.bytes_contents.extend([b"good", b"bad"])
        response = stub.ModelInfer(request, metadata=tuple(auth().items()))
    assert response.id == "typed-1"
    assert [o.name for o in response.outputs] == ["label", "probabilities"]
    assert len(response.raw_output_contents) == 2


def test_grpc_garbled_request_is_invalid_argument(server: ServerProcess) -> None:
    """Bytes that are not a ModelInferRequest: the client's mistake, INVALID_ARGUMENT."""
    with grpc.insecure_channel(server.grpc_address) as channel:  # type: ignore[attr-defined]
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff", metadata=tuple(auth().items()), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in caught.value.details()


def test_grpc_errors_map_to_status_codes(grpc_client: tgrpc.InferenceServerClient) -> None:
    c = grpc_client
    no_key = grpc_error(lambda: c.infer("sentiment", [grpc_input("text", TEXTS)]))
    assert no_key.status() == "StatusCode.UNAUTHENTICATED"
    wrong = grpc_error(
        lambda: c.get_model_metadata("sentiment", headers={"authorization": "Bearer nope-nope"})
    )
    assert wrong.status() == "StatusCode.UNAUTHENTICATED"
    unknown = grpc_error(lambda: c.get_model_metadata("nope", headers=auth()))
    assert unknown.status() == "StatusCode.NOT_FOUND" and "nope" in unknown.message()
    version = grpc_error(lambda: c.get_model_config("sentiment", "7", headers=auth()))
    assert version.status() == "StatusCode.NOT_FOUND"
    bad_input = grpc_error(lambda: c.infer("sentiment", [grpc_input("txt", TEXTS)], headers=auth()))
    assert bad_input.status() == "StatusCode.INVALID_ARGUMENT" and "txt" in bad_input.message()
    numbers = tgrpc.InferInput("text", [2], "FP32")
    numbers.set_data_from_numpy(np.zeros(2, dtype=np.float32))
    wrong_type = grpc_error(lambda: c.infer("sentiment", [numbers], headers=auth()))
    assert wrong_type.status() == "StatusCode.INVALID_ARGUMENT"
    empty = grpc_error(
        lambda: c.infer(
            "sentiment", [grpc_input("text", np.array([], dtype=np.object_))], headers=auth()
        )
    )
    assert empty.status() == "StatusCode.INVALID_ARGUMENT"
    control = grpc_error(lambda: c.load_model("sentiment", headers=auth()))
    assert control.status() == "StatusCode.INVALID_ARGUMENT"
    assert "model_control_mode" in control.message()


# ------------------------------------------------------------------- config and statistics


def test_model_config_over_http_and_grpc(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    """Triton's JSON configuration; the gRPC form is the same document as a ModelConfig."""
    config = http_client.get_model_config("nli", headers=auth())
    assert config["name"] == "nli" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] >= 1
    assert [i["name"] for i in config["input"]] == ["premise", "hypothesis"]
    assert all(i["data_type"] == "TYPE_STRING" for i in config["input"])
    assert config["output"][1] == {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]}
    assert config["dynamic_batching"]["preferred_batch_size"][0] >= 1
    assert config["parameters"]["labels"]["string_value"] == "entailment,neutral,contradiction"
    assert http_client.get_model_config("nli", "1", headers=auth()) == config
    json_format.ParseDict(config, model_config_pb2.ModelConfig())  # a valid model_config.proto

    over_grpc = grpc_client.get_model_config("nli", headers=auth()).config
    assert over_grpc.max_batch_size == config["max_batch_size"]
    assert over_grpc.input[0].data_type == model_config_pb2.TYPE_STRING
    assert list(over_grpc.output[1].dims) == [3]
    assert over_grpc.dynamic_batching.default_queue_policy.max_queue_size >= 1


def test_statistics_count_requests_and_batches(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    """Success counts and cumulative times grow with each request, whichever protocol it came
    by; batch_stats add up to the executions."""

    def stats() -> dict[str, Any]:
        (entry,) = http_client.get_inference_statistics("sentiment", headers=auth())["model_stats"]
        return entry

    before = stats()
    http_client.infer("sentiment", [http_input("text", TEXTS)], headers=auth())
    grpc_client.infer("sentiment", [grpc_input("text", TEXTS)], headers=auth())
    grpc_error(
        lambda: grpc_client.infer("sentiment", [grpc_input("text", TEXTS[:0])], headers=auth())
    )
    after = stats()
    assert after["name"] == "sentiment" and after["version"] == "1"
    done = after["inference_stats"]
    assert done["success"]["count"] == before["inference_stats"]["success"]["count"] + 2
    assert done["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert done[phase]["count"] == done["success"]["count"]
        assert done[phase]["ns"] > before["inference_stats"][phase]["ns"] or phase == "queue"
    assert done["success"]["ns"] >= done["compute_infer"]["ns"]
    assert after["inference_count"] >= before["inference_count"] + 4
    assert after["execution_count"] == sum(
        b["compute_infer"]["count"] for b in after["batch_stats"]
    )
    assert after["last_inference"] > 0

    everything = grpc_client.get_inference_statistics(headers=auth(), as_json=True)["model_stats"]
    assert {s["name"] for s in everything} == {"sentiment", "nli", "translator"}
    one = grpc_client.get_inference_statistics("sentiment", "1", headers=auth()).model_stats[0]
    assert one.inference_stats.success.count >= done["success"]["count"]


def test_repository_index_over_http_and_grpc(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    expected = [
        {"name": name, "version": "1", "state": "READY"}
        for name in ("nli", "sentiment", "translator")
    ]
    assert http_client.get_model_repository_index(headers=auth()) == expected
    index = grpc_client.get_model_repository_index(headers=auth(), as_json=True)
    assert index["models"] == expected


# ----------------------------------------------------------------------------- in process


def test_grpc_answers_unavailable_while_draining(app_client: Callable[..., Any]) -> None:
    """The lifespan's gRPC server shares the drain: once it starts, readiness is false and new
    inference is UNAVAILABLE; a full queue is RESOURCE_EXHAUSTED with retry information."""
    port = free_port()
    with app_client(grpc_port=port) as http:
        state = http.app.state.nlpserve
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="sentiment")
            request.inputs.add(name="text", datatype="BYTES", shape=[1])
            request.inputs[0].contents.bytes_contents.append(b"fine")
            assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
            assert stub.ModelInfer(request).outputs[0].name == "label"

            batcher = state.registry.get("sentiment").batcher
            batcher.policy = dataclasses.replace(batcher.policy, max_queue_size=0)
            with pytest.raises(grpc.RpcError) as full:
                stub.ModelInfer(request)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(full.value.trailing_metadata())
            assert int(trailers["retry-after"]) >= 1
            assert int(trailers["grpc-retry-pushback-ms"]) == 1000 * int(trailers["retry-after"])

            state.lifecycle.start_draining()
            assert not stub.ServerReady(service_pb2.ServerReadyRequest()).ready
            with pytest.raises(grpc.RpcError) as draining:
                stub.ModelInfer(request)
            assert draining.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_busy_grpc_port_stops_the_server_with_one_line(model_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "service", "--model-repository", str(model_repository)]
        done = subprocess.run(
            [*command, "--port", str(free_port()), "--grpc-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nlpserve: cannot listen for gRPC on 127.0.0.1:{port} (Address already in use); "
        "--grpc-port 0 turns it off"
    ]
