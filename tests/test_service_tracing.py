"""OpenTelemetry traces, read back from the SDK's in-memory exporter: one server span per request
(HTTP, and gRPC calls on a real grpcio server on loopback) continuing the client's `traceparent`,
child spans for the inference steps with their batch attributes, the trace id in the request log
line; nothing installed, and the SDK not imported, when tracing is off."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.grpc import service_pb2, service_pb2_grpc

import service.tracing as tracing_module
from service.app import create_app
from service.tracing import (
    RequestTrace,
    Tracing,
    TracingMiddleware,
    emit_steps,
    install_tracing,
    installed_tracing,
    mark_admission,
    mark_batches,
)
from tests.conftest import PROJECT_ROOT, free_port, wait_until_ready

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
STEPS = ["admission", "tokenization", "queue wait", "engine run", "response encoding"]
GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def traced(
    service_settings: Callable[..., Any],
) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    app = create_app(service_settings(grpc_port=free_port()))  # gRPC too, in the same lifespan
    install_tracing(app, Tracing(exporter, batch=False))
    with TestClient(app) as client:
        wait_until_ready(client)
        yield client, exporter


@pytest.fixture(scope="module")
def grpc_stub(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    port = traced[0].app.state.nlpserve.settings.grpc_port  # type: ignore[attr-defined]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_request(model: str, texts: list[str]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.inputs[0].contents.bytes_contents.extend(t.encode() for t in texts)
    return request


def finished_spans(exporter: InMemorySpanExporter, roots: int) -> list[ReadableSpan]:
    """The finished spans once `roots` root spans are among them: an aborted call's status can
    reach the client before the server's handler has closed its span."""
    deadline = time.monotonic() + 10
    while True:
        spans = list(exporter.get_finished_spans())
        if sum(s.parent is None for s in spans) >= roots or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def children_of(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """`parent`'s child spans in the order they ran."""
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: (s.start_time, STEPS.index(s.name)),
    )


def spans_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def test_request_span_continues_the_client_trace_with_step_children(
    traced: tuple[TestClient, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    client, exporter = traced
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    with caplog.at_level(logging.INFO, logger="nlpserve.access"):
        reply = client.post(
            "/v1/classify", json={"texts": ["good", "a longer bad text"]}, headers=headers
        )
    assert reply.status_code == 200
    spans = spans_of(exporter, int(TRACE_ID, 16))
    (server,) = [
        s for s in spans if s.parent is not None and s.parent.span_id == int(PARENT_ID, 16)
    ]
    assert server.name == "POST /v1/classify"
    assert server.attributes["http.route"] == "/v1/classify"
    assert server.attributes["http.response.status_code"] == 200
    children = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id),
        key=lambda s: (s.start_time, STEPS.index(s.name)),
    )
    assert [s.name for s in children] == STEPS
    for before, after in itertools.pairwise(children):  # one after the other, in order
        assert before.end_time <= after.start_time
    for child in children:
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    engine = children[STEPS.index("engine run")]
    assert engine.attributes["nlpserve.batch_size"] == 2
    assert engine.attributes["nlpserve.padded_tokens"] >= 2 * 3  # two sequences, [CLS] x [SEP]
    (line,) = [r for r in caplog.records if r.__dict__.get("route") == "/v1/classify"]
    assert line.__dict__["trace_id"] == TRACE_ID


def test_a_request_without_traceparent_starts_a_trace(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    body = {"texts": ["A dog runs."], "max_new_tokens": 4}
    assert client.post("/v1/translate", json=body).status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    spans = exporter.get_finished_spans()
    roots = {s.name: s for s in spans if s.parent is None}
    assert set(roots) == {"POST /v1/translate", "GET /v2/health/live"}

    def children(root: ReadableSpan) -> set[str]:
        return {s.name for s in spans if s.parent and s.parent.span_id == root.context.span_id}

    # The translator decodes step by step (service/decode_scheduler.py): its items do not say when
    # their decoding started, so one engine-run span covers the queue wait too.
    translate = roots["POST /v1/translate"]
    assert children(translate) == set(STEPS) - {"queue wait"}
    (engine,) = [s for s in spans if s.name == "engine run"]
    assert engine.parent is not None and engine.parent.span_id == translate.context.span_id
    assert engine.attributes["nlpserve.includes_queue_wait"] is True
    assert children(roots["GET /v2/health/live"]) == set()  # no inference, no steps


def test_a_streamed_translation_traces_its_queue_wait_and_decode(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    """A streamed translation's steps are built when the stream has ended: admission,
    tokenization, queue wait until its sequence joined the running decode batch, then one
    engine run from the join to the end of the stream, with the rows of the step it joined and
    its decode steps as attributes; no response-encoding span (pieces are encoded as they
    decode)."""
    client, exporter = traced
    exporter.clear()
    body = {"texts": ["A dog runs."], "max_new_tokens": 4, "stream": True}
    reply = client.post("/v1/translate", json=body)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    *_, done = [json.loads(line[6:]) for line in reply.text.splitlines() if line[:6] == "data: "]
    spans = list(exporter.get_finished_spans())
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == "POST /v1/translate"
    children = children_of(spans, root)
    assert [s.name for s in children] == ["admission", "tokenization", "queue wait", "engine run"]
    for before, after in itertools.pairwise(children):  # one after the other, in order
        assert before.end_time <= after.start_time
    for child in children:
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    engine = children[-1]
    assert engine.attributes is not None
    assert engine.attributes["nlpserve.streamed"] is True
    assert engine.attributes["nlpserve.batch_size"] == 1  # it decoded alone
    steps = engine.attributes["nlpserve.decode_steps"]
    assert isinstance(steps, int)
    assert 1 <= done["tokens"] <= steps <= done["tokens"] + 1  # the last step's <eos> uncounted
    assert root.end_time - engine.end_time < 0.5e9  # it ends with the stream, not at its start
    assert "nlpserve.includes_queue_wait" not in engine.attributes


def test_rejected_request_traces_admission_only(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    too_long = "x" * 10_001  # over the default max_text_chars: refused at admission
    assert client.post("/v1/classify", json={"texts": [too_long]}).status_code == 413
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes["http.response.status_code"] == 413
    names = [s.name for s in exporter.get_finished_spans() if s.parent is not None]
    assert names == ["admission"]


def test_grpc_call_continues_the_client_trace_with_step_children(
    traced: tuple[TestClient, InMemorySpanExporter],
    grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `traceparent` sent as gRPC metadata: the call's server span continues that trace, with
    the same step children as over HTTP, and the trace id is in the call's log line."""
    _, exporter = traced
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    with caplog.at_level(logging.INFO, logger="nlpserve.access"):
        reply = grpc_stub.ModelInfer(
            infer_request("sentiment", ["good", "a longer bad text"]), metadata=metadata
        )
    assert reply.outputs[0].name == "label"
    spans = spans_of(exporter, int(TRACE_ID, 16))
    (server,) = [
        s for s in spans if s.parent is not None and s.parent.span_id == int(PARENT_ID, 16)
    ]
    assert server.name == GRPC_INFER and server.kind == SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert server.attributes["rpc.method"] == "ModelInfer"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.status.status_code == StatusCode.UNSET
    children = children_of(spans, server)
    assert [s.name for s in children] == STEPS
    for before, after in itertools.pairwise(children):
        assert before.end_time <= after.start_time
    for child in children:
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    engine = children[STEPS.index("engine run")]
    assert engine.attributes["nlpserve.batch_size"] == 2
    assert engine.attributes["nlpserve.padded_tokens"] >= 2 * 3
    (line,) = [r for r in caplog.records if r.__dict__.get("route") == "/" + GRPC_INFER]
    assert line.__dict__["trace_id"] == TRACE_ID


def test_grpc_calls_without_traceparent_and_refused_calls(
    traced: tuple[TestClient, InMemorySpanExporter],
    grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """No `traceparent`: a new trace (the translator's step decoding gives one engine-run span
    with its queue wait). A call refused at admission: admission only, its status code on the
    span, not an error span (the client's mistake); a probe: a span without steps."""
    _, exporter = traced
    exporter.clear()
    grpc_stub.ModelInfer(infer_request("translator", ["A dog runs."]))
    assert grpc_stub.ServerLive(service_pb2.ServerLiveRequest()).live
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub.ModelInfer(infer_request("sentiment", ["x" * 10_001]))  # over max_text_chars
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = finished_spans(exporter, roots=3)
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == [
        GRPC_INFER,
        "inference.GRPCInferenceService/ServerLive",
        GRPC_INFER,
    ]
    translate, live, over = roots
    assert {s.name for s in children_of(spans, translate)} == set(STEPS) - {"queue wait"}
    assert children_of(spans, live) == []
    assert [s.name for s in children_of(spans, over)] == ["admission"]
    assert over.attributes is not None
    assert over.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert over.status.status_code == StatusCode.UNSET


def test_tracing_is_off_by_default(
    app_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """No endpoint: no tracing middleware, no tracing for the gRPC server, no trace id in the
    log line."""
    with app_client() as client, caplog.at_level(logging.INFO, logger="nlpserve.access"):
        assert TracingMiddleware not in {m.cls for m in client.app.user_middleware}  # type: ignore[attr-defined]
        assert installed_tracing(client.app) is None  # type: ignore[arg-type]
        assert client.post("/v1/classify", json={"texts": ["fine"]}).status_code == 200
    (line,) = [r for r in caplog.records if r.__dict__.get("route") == "/v1/classify"]
    assert "trace_id" not in line.__dict__


OFF_SCRIPT = """
import sys
import grpc
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from service.app import create_app
from service.settings import Settings
from tests.conftest import QUIET_SERVICE_SETTINGS, wait_until_ready

port = int(sys.argv[2])
settings = {**QUIET_SERVICE_SETTINGS, "grpc_port": port}
app = create_app(Settings(model_repository=sys.argv[1], **settings))
with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    wait_until_ready(client)
    assert client.post("/v1/classify", json={"texts": ["fine"]}).status_code == 200
    request = service_pb2.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.inputs[0].contents.bytes_contents.append(b"fine")
    service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
sdk = ("opentelemetry.sdk", "opentelemetry.exporter")
loaded = sorted(m for m in sys.modules if m.startswith(sdk))
assert not loaded, loaded
"""


def test_tracing_off_never_imports_the_sdk(model_repository: Any) -> None:
    """Without an endpoint, serving HTTP and gRPC calls imports no OpenTelemetry SDK or exporter
    (a fresh interpreter: this module imports the SDK itself)."""
    command = [sys.executable, "-c", OFF_SCRIPT, str(model_repository), str(free_port())]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_endpoint_turns_on_otlp_export(service_settings: Callable[..., Any]) -> None:
    app = create_app(service_settings(otlp_endpoint="http://127.0.0.1:4318/v1/traces"))
    assert TracingMiddleware in {m.cls for m in app.user_middleware}


def test_service_name_defaults_to_nlpserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard OTEL_SERVICE_NAME wins over the default."""

    def service_name() -> object:
        return Tracing(InMemorySpanExporter()).provider.resource.attributes["service.name"]

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_name() == "nlpserve"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nlpserve-eu")
    assert service_name() == "nlpserve-eu"


def test_a_scheduler_without_run_times_gets_one_engine_span() -> None:
    """Work items that record when they were queued but not when their run started (a step
    scheduler's) give one `engine run` span from enqueueing to results, marked as such."""
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, batch=False)
    request_span = tracing.tracer.start_span("POST /v1/translate")
    trace = RequestTrace(request_span, time.time_ns() - time.monotonic_ns())
    token = tracing_module._current.set(trace)
    try:
        mark_admission()
        queued = time.monotonic()
        mark_batches([SimpleNamespace(enqueued_at=queued, batch_size=3)])
    finally:
        tracing_module._current.reset(token)
    emit_steps(tracing, trace)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"admission", "engine run", "response encoding"}
    engine = spans["engine run"]
    assert engine.attributes["nlpserve.includes_queue_wait"] is True
    assert engine.attributes["nlpserve.batch_size"] == 3
    assert engine.start_time == trace.ns(queued)
