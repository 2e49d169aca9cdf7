"""OpenTelemetry traces, optional: on with `NLPSERVE_OTLP_ENDPOINT` (and the `otel` extra).

One server span per HTTP request and per gRPC call (the client's W3C `traceparent`, a header or
gRPC metadata, continues its trace) with child spans for the steps of inference: admission,
tokenization, queue wait, engine run (batch size and padded tokens as attributes) and response
encoding. A streamed translation (service/streaming.py) has admission, tokenization, queue wait
(until its sequence joins the running decode batch) and engine run (from the join to the end of
the stream, its rows at the join and decode steps as attributes); its response is encoded piece
by piece while it decodes, so it has no response-encoding span. The trace id goes into the
request's log line.

The inference path only leaves timestamps on the request's `RequestTrace` (found through a
context variable, so nothing is passed around); the spans are built from them, with their real
start and end times, when the response is ready (a stream: when it has ended). With tracing off
no middleware is installed, the gRPC server gets no `Tracing`, the context variable stays empty,
every `mark_*` call returns at its first line, and nlpserve never imports opentelemetry (recent
FastAPI releases import the OpenTelemetry API itself, the SDK stays out).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

OTEL_MISSING = "NLPSERVE_OTLP_ENDPOINT needs OpenTelemetry: pip install 'nlpserve[otel]'"
ACCESS_LOGGER = "nlpserve.access"  # the request log line (service/middleware.py)


class DecodingStream(Protocol):
    """A streamed sequence as its trace reads it, at the end of the stream (monotonic clock)."""

    @property
    def enqueued_at(self) -> float: ...

    @property
    def joined_at(self) -> float | None:
        """When it joined the running decode batch (None: it never did)."""
        ...

    @property
    def rows_at_join(self) -> int: ...

    @property
    def steps(self) -> int:
        """Decode steps it ran (greedy: one token each)."""
        ...


@dataclass
class RequestTrace:
    """One request's span and the monotonic timestamps of its inference steps."""

    span: Span
    epoch_offset_ns: int  # time.time_ns() - time.monotonic_ns(), fixed at the request's start
    admission_at: float | None = None
    tokenization: tuple[float, float] | None = None
    enqueued_at: float | None = None
    run_started: float | None = None
    results_at: float | None = None
    batch_size: int = 0
    padded_tokens: int = 0
    runs: int = 0
    stream: DecodingStream | None = None  # a streamed response: its steps end with the stream
    emitted: bool = field(default=False, repr=False)

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self.epoch_offset_ns


_current: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "nlpserve_request_trace", default=None
)


# ------------------------------------------------------------------ what the inference path marks


def mark_admission() -> None:
    """Inference started checking the request (draining, readiness, limits)."""
    trace = _current.get()
    if trace is not None and trace.admission_at is None:
        trace.admission_at = time.monotonic()


def mark_tokenization(started: float, ended: float) -> None:
    trace = _current.get()
    if trace is not None:
        trace.tokenization = (started, ended)


def mark_batches(items: Sequence[Any]) -> None:
    """The request's sequences came back from the batcher (`WorkItem`s with `enqueued_at`,
    `run_started`, `batch_size`, `padded_tokens`)."""
    trace = _current.get()
    if trace is None or not items:
        return
    trace.results_at = time.monotonic()
    trace.enqueued_at = min(getattr(item, "enqueued_at", trace.results_at) for item in items)
    # getattr: a scheduler whose items do not record their run still gets a queue+engine span
    runs = {
        (
            getattr(item, "run_started", None),
            getattr(item, "batch_size", 0),
            getattr(item, "padded_tokens", 0),
        )
        for item in items
    }
    started = [run[0] for run in runs if run[0] is not None]
    trace.run_started = min(started) if started else None
    trace.runs = len(runs)
    trace.batch_size = max(run[1] for run in runs)
    trace.padded_tokens = sum(run[2] for run in runs)


def mark_stream(stream: DecodingStream) -> None:
    """The response streams while its sequence decodes: its step spans are built when the
    stream has ended, from what `stream` says then."""
    trace = _current.get()
    if trace is not None:
        trace.stream = stream
        trace.enqueued_at = stream.enqueued_at


# ------------------------------------------------------------------ set-up


class Tracing:
    """A tracer provider of the app's own (not the global one, so several apps in one process
    keep their spans apart) and the W3C trace-context propagator."""

    def __init__(self, exporter: SpanExporter, batch: bool = True) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(OTEL_MISSING) from e

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply (Resource.create reads them);
        # without them the service is "nlpserve", not the SDK's "unknown_service"
        resource = Resource.create({"service.version": service.__version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "nlpserve"}))
        self.provider: TracerProvider = TracerProvider(resource=resource)
        # Batch: spans leave on a background thread, never on the request path. Simple: at once
        # (tests read an in-memory exporter right after the response).
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("nlpserve")
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def otlp(cls, endpoint: str) -> Tracing:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise RuntimeError(OTEL_MISSING) from e
        return cls(OTLPSpanExporter(endpoint=endpoint))

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor still holds


class TraceIdFilter(logging.Filter):
    """Adds `trace_id` to log records written while a traced request runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace = _current.get()
        if trace is not None:
            record.trace_id = trace.trace_id
        return True


def install_tracing(app: FastAPI, tracing: Tracing) -> None:
    """Trace every request of `app` (call before it starts serving), its gRPC calls included.
    Outermost middleware, so the request log line, written by the request middleware inside it,
    carries the trace id; the lifespan hands the same `Tracing` to the gRPC server
    (`installed_tracing`)."""
    app.add_middleware(TracingMiddleware, tracing=tracing)
    access_log = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, TraceIdFilter) for f in access_log.filters):
        access_log.addFilter(TraceIdFilter())


def installed_tracing(app: FastAPI) -> Tracing | None:
    """The `Tracing` that `install_tracing` gave `app`, or None when tracing is off."""
    for middleware in app.user_middleware:
        tracing = middleware.kwargs.get("tracing")
        if middleware.cls is TracingMiddleware and isinstance(tracing, Tracing):
            return tracing
    return None


# ------------------------------------------------------------------ the middleware


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        headers = Headers(scope=scope)
        parent = self.tracing.propagator.extract({k: headers[k] for k in headers})
        method = scope["method"]
        span = self.tracing.tracer.start_span(
            f"{method} {scope['path']}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        request_trace = RequestTrace(span, time.time_ns() - time.monotonic_ns())
        trace_token = _current.set(request_trace)
        context_token = context.attach(trace.set_span_in_context(span))
        status = 500

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if request_trace.stream is None:  # a stream's steps wait for its end
                    emit_steps(self.tracing, request_trace)
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except Exception as error:
            span.record_exception(error)
            raise
        finally:
            emit_steps(self.tracing, request_trace)  # a stream's, now that it ended (once)
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            context.detach(context_token)
            _current.reset(trace_token)


# ------------------------------------------------------------------ gRPC calls


class RpcSpan:
    """One gRPC call's server span (OpenTelemetry's RPC conventions: `rpc.system`, `rpc.service`,
    `rpc.method`, `rpc.grpc.status_code`), continuing a `traceparent` sent as metadata: the gRPC
    twin of TracingMiddleware, opened and closed by the servicer's `rpc` wrapper in the call's
    own task."""

    def __init__(
        self, tracing: Tracing, service: str, method: str, metadata: Iterable[tuple[str, Any]]
    ) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        # gRPC metadata keys are lower case already; binary (`-bin`) values are not trace context
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        span = tracing.tracer.start_span(
            f"{service}/{method}",
            context=tracing.propagator.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        self.tracing = tracing
        self.trace = RequestTrace(span, time.time_ns() - time.monotonic_ns())
        self._trace_token = _current.set(self.trace)
        self._context_token = context.attach(trace.set_span_in_context(span))

    def response_ready(self) -> None:
        """The response is encoded (or the call failed): the step spans, as for HTTP."""
        emit_steps(self.tracing, self.trace)

    def end(self, status_code: int, error: bool) -> None:
        """Close the span with the call's gRPC status code (`error`: a server-side failure)."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = self.trace.span
        span.set_attribute("rpc.grpc.status_code", status_code)
        if error:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(self._context_token)
        _current.reset(self._trace_token)


# ------------------------------------------------------------------ the step spans


Step = tuple[str, float, float | None, dict[str, Any]]  # name, start, end (None: now), attributes


def emit_steps(tracing: Tracing, rt: RequestTrace) -> None:
    """The request span's children, from the timestamps the inference path left (none for a
    request that never reached inference); once per request."""
    if rt.emitted or rt.admission_at is None:
        return
    rt.emitted = True
    now = time.monotonic()
    tokenization_start = rt.tokenization[0] if rt.tokenization else None
    steps: list[Step] = [
        ("admission", rt.admission_at, tokenization_start or rt.enqueued_at or now, {}),
    ]
    if rt.tokenization:
        steps.append(("tokenization", *rt.tokenization, {}))
    if rt.stream is not None:
        steps.extend(_stream_steps(rt.stream, now))
    elif rt.enqueued_at is not None:
        attributes: dict[str, Any] = {
            "nlpserve.batch_size": rt.batch_size,
            "nlpserve.padded_tokens": rt.padded_tokens,
            "nlpserve.runs": rt.runs,
        }
        if rt.run_started is not None:
            steps.append(("queue wait", rt.enqueued_at, rt.run_started, {}))
            steps.append(("engine run", rt.run_started, rt.results_at, attributes))
        else:  # a scheduler that does not say when the run started: one span for both
            attributes["nlpserve.includes_queue_wait"] = True
            steps.append(("engine run", rt.enqueued_at, rt.results_at, attributes))
    if rt.results_at is not None:
        steps.append(("response encoding", rt.results_at, now, {}))
    from opentelemetry import trace

    parent = trace.set_span_in_context(rt.span)
    for name, start, end, attributes in steps:
        child = tracing.tracer.start_span(
            name, context=parent, start_time=rt.ns(start), attributes=attributes
        )
        child.end(end_time=rt.ns(end if end is not None else now))


def _stream_steps(stream: DecodingStream, ended: float) -> list[Step]:
    """A streamed sequence's queue wait (until it joined the running decode batch, or until the
    stream ended if it never did) and engine run (from the join to the end of the stream)."""
    joined = stream.joined_at
    steps: list[Step] = [
        ("queue wait", stream.enqueued_at, ended if joined is None else joined, {})
    ]
    if joined is not None:
        attributes = {
            "nlpserve.batch_size": stream.rows_at_join,  # decoder rows of the step it joined
            "nlpserve.decode_steps": stream.steps,
            "nlpserve.streamed": True,
        }
        steps.append(("engine run", joined, ended, attributes))
    return steps
