"""OpenTelemetry traces, read back from the SDK's in-memory exporter: one server span per request
continuing the client's `traceparent`, child spans for the inference steps with their batch
attributes, the trace id in the request log line; nothing installed when tracing is off."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import service.tracing as tracing_module
from service.app import create_app
from service.tracing import (
    RequestTrace,
    Tracing,
    TracingMiddleware,
    install_tracing,
    mark_admission,
    mark_batches,
)
from tests.conftest import wait_until_ready

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
STEPS = ["admission", "tokenization", "queue wait", "engine run", "response encoding"]


@pytest.fixture(scope="module")
def traced(
    service_settings: Callable[..., Any],
) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    app = create_app(service_settings())
    install_tracing(app, Tracing(exporter, batch=False))
    with TestClient(app) as client:
        wait_until_ready(client)
        yield client, exporter


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


def test_tracing_is_off_by_default(
    app_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """No endpoint: no tracing middleware, no trace id in the log line."""
    with app_client() as client, caplog.at_level(logging.INFO, logger="nlpserve.access"):
        assert TracingMiddleware not in {m.cls for m in client.app.user_middleware}  # type: ignore[attr-defined]
        assert client.post("/v1/classify", json={"texts": ["fine"]}).status_code == 200
    (line,) = [r for r in caplog.records if r.__dict__.get("route") == "/v1/classify"]
    assert "trace_id" not in line.__dict__


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
    middleware = TracingMiddleware(app=None, tracing=tracing)  # type: ignore[arg-type]
    request_span = tracing.tracer.start_span("POST /v1/translate")
    trace = RequestTrace(request_span, time.time_ns() - time.monotonic_ns())
    token = tracing_module._current.set(trace)
    try:
        mark_admission()
        queued = time.monotonic()
        mark_batches([SimpleNamespace(enqueued_at=queued, batch_size=3)])
    finally:
        tracing_module._current.reset(token)
    middleware._emit_steps(trace)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"admission", "engine run", "response encoding"}
    engine = spans["engine run"]
    assert engine.attributes["nlpserve.includes_queue_wait"] is True
    assert engine.attributes["nlpserve.batch_size"] == 3
    assert engine.start_time == trace.ns(queued)
