"""`inference.GRPCInferenceService` (the Open Inference Protocol over gRPC) on `--grpc-port`.

A grpcio asyncio server in the HTTP server's process and event loop, started and stopped by the
app's lifespan: it shares the registry, batchers, request limits, API keys (as `authorization`
metadata: `Bearer <key>`), metrics and drain with the HTTP routes, and every inference goes
through the same path (`oip_infer.run`). The servicer base class is the one protoc generated from
Triton's grpc_service.proto, as `tritonclient` ships it; methods nlpserve does not implement
(shared memory, tracing, log settings, streaming) answer UNIMPLEMENTED from that base class.

Errors keep their `ErrorKind` and map to status codes in `grpc_status`, the gRPC twin of
`errors.status_code`; an overloaded model answers RESOURCE_EXHAUSTED with `retry-after` (seconds)
and gRPC's own `grpc-retry-pushback-ms` in the trailing metadata.

With tracing on (service/tracing.py) every call is a server span with the same step children as
an HTTP request, continuing a `traceparent` sent as metadata.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

import service
from service import grpc_codec, oip_infer, oip_models
from service.auth import bearer_token, key_matches
from service.context import ServiceState
from service.errors import ErrorKind, ServiceError
from service.request_info import RequestInfo, new_request_id
from service.served_model import ServedModel
from service.tracing import RpcSpan, Tracing

logger = logging.getLogger(__name__)
access_log = logging.getLogger("nlpserve.access")

SERVICE = "inference.GRPCInferenceService"


def grpc_status(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC status code for an error kind (the twin of `errors.status_code`)."""
    return {
        ErrorKind.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorKind.VALIDATION: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorKind.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
        ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        # A limit on one request: retrying the same request cannot help, so not
        # RESOURCE_EXHAUSTED, which here means "overloaded, retry later".
        ErrorKind.PAYLOAD_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorKind.CLIENT_CLOSED: grpc.StatusCode.CANCELLED,
        ErrorKind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
        ErrorKind.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
        ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
        ErrorKind.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
        ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    }[kind]


# Server-side failures, by OpenTelemetry's RPC conventions: the span's status is ERROR.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Method = Callable[[Any, Any, Any, RequestInfo], Awaitable[Any]]  # (self, request, context, info)
Handler = Callable[[Any, Any, Any], Awaitable[Any]]  # what grpc calls: (self, request, context)


def rpc(guarded: bool = True) -> Callable[[Method], Handler]:
    """Wrap a servicer method: API key check (when `guarded`), ServiceError -> status code,
    unexpected exceptions -> INTERNAL (logged, never sent), latency metric, access log and,
    with tracing on, the call's span."""

    def wrap(method: Method) -> Handler:
        name = getattr(method, "__name__", "unknown")
        route = f"/{SERVICE}/{name}"

        @functools.wraps(method)
        async def handler(self: InferenceServicer, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            info = RequestInfo(
                request_id=getattr(request, "id", "") or new_request_id(),
                started=asyncio.get_running_loop().time(),
            )
            span = None
            if self.tracing is not None:
                metadata = context.invocation_metadata() or ()
                span = RpcSpan(self.tracing, SERVICE, name, metadata)
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, Malformed):
                    raise ServiceError(ErrorKind.BAD_REQUEST, request.message)
                if guarded:
                    self.check_api_key(context)
                return await method(self, request, context, info)
            except ServiceError as e:
                code = grpc_status(e.kind)
                await context.abort(code, e.message, trailing_metadata=_trailers(e))
                raise  # abort raises; this line only tells type checkers
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as e:
                if isinstance(e, grpc.aio.AbortError):
                    raise
                code = grpc.StatusCode.INTERNAL
                logger.error("unhandled error on %s", route, exc_info=e)
                await context.abort(code, "internal server error")
                raise
            finally:
                if span is not None:
                    span.response_ready()
                seconds = time.perf_counter() - started
                self.state.metrics.request_seconds.labels(
                    route, info.model or "", code.name
                ).observe(seconds)
                access_log.info(
                    "GRPC %s %s",
                    route,
                    code.name,
                    extra={
                        "request_id": info.request_id,
                        "method": "GRPC",
                        "route": route,
                        "model": info.model,
                        "status": code.name,
                        "latency_ms": round(seconds * 1000, 2),
                        "batch_size": info.batch_size,
                    },
                )  # inside the span: the line carries its trace id
                if span is not None:
                    span.end(code.value[0], error=code in SERVER_ERRORS)

        return handler

    return wrap


class Malformed:
    """A request whose bytes are not its protobuf message: the handler answers INVALID_ARGUMENT
    (grpc itself would answer UNKNOWN, a server-error class, for a client's mistake)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], Any], what: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as e:
            return Malformed(f"the request is not a valid {what} message: {e}")

    return parse


class _Collector:
    """Stands in for a server to collect the generated method handlers (to wrap them)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


def _method_handlers(servicer: InferenceServicer) -> dict[str, Any]:
    """The generated handlers of every method, their request parsing made tolerant."""
    collector = _Collector()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, collector)
    return {
        name: handler._replace(
            request_deserializer=_tolerant(handler.request_deserializer, f"{name}Request")
        )
        for name, handler in collector.handlers.items()
    }


def _trailers(error: ServiceError) -> tuple[tuple[str, str], ...]:
    if error.retry_after is None:
        return ()
    return (
        ("retry-after", str(error.retry_after)),
        ("grpc-retry-pushback-ms", str(error.retry_after * 1000)),
    )


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServiceState, tracing: Tracing | None = None) -> None:
        self.state = state
        self.tracing = tracing  # None: tracing off, nothing traced

    def check_api_key(self, context: Any) -> None:
        keys = self.state.settings.api_key_values()
        if not keys:
            return
        header = dict(context.invocation_metadata() or ()).get("authorization")
        if not key_matches(bearer_token(str(header) if header is not None else None), keys):
            raise ServiceError(
                ErrorKind.UNAUTHORIZED,
                "a valid API key is required (metadata authorization: Bearer <key>)",
            )

    def _model(self, name: str, version: str) -> ServedModel:
        return self.state.registry.get(name, version or None)

    # ------------------------------------------------------------------ server

    @rpc(guarded=False)
    async def ServerLive(self, request: Any, context: Any, info: RequestInfo) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @rpc(guarded=False)
    async def ServerReady(self, request: Any, context: Any, info: RequestInfo) -> Any:
        ready = self.state.registry.ready() and not self.state.lifecycle.draining
        return service_pb2.ServerReadyResponse(ready=ready)

    @rpc(guarded=False)
    async def ServerMetadata(self, request: Any, context: Any, info: RequestInfo) -> Any:
        return service_pb2.ServerMetadataResponse(
            name="nlpserve", version=service.__version__, extensions=oip_models.EXTENSIONS
        )

    # ------------------------------------------------------------------ models

    @rpc()
    async def ModelReady(self, request: Any, context: Any, info: RequestInfo) -> Any:
        model = self._model(request.name, request.version)
        ready = model.ready and not self.state.lifecycle.draining
        return service_pb2.ModelReadyResponse(ready=ready)

    @rpc()
    async def ModelMetadata(self, request: Any, context: Any, info: RequestInfo) -> Any:
        model = self._model(request.name, request.version)
        return json_format.ParseDict(
            oip_models.metadata(model, self.state.registry), service_pb2.ModelMetadataResponse()
        )

    @rpc()
    async def ModelConfig(self, request: Any, context: Any, info: RequestInfo) -> Any:
        model = self._model(request.name, request.version)
        config = json_format.ParseDict(
            oip_models.model_config(model, self.state.settings), model_config_pb2.ModelConfig()
        )
        return service_pb2.ModelConfigResponse(config=config)

    @rpc()
    async def ModelStatistics(self, request: Any, context: Any, info: RequestInfo) -> Any:
        stats = oip_models.statistics(
            self.state.registry, request.name or None, request.version or None
        )
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    @rpc()
    async def ModelInfer(self, request: Any, context: Any, info: RequestInfo) -> Any:
        model = self._model(request.model_name, request.model_version)
        info.model = model.name
        oip_models.config_of(model)
        _honour_client_deadline(info, context, self.state.settings.request_timeout_s)
        decoded = grpc_codec.decode_request(request)
        # No disconnect watcher: when the client goes away grpc cancels this task, and the
        # shared path cancels the request's queued sequences on the way out.
        outputs, parameters = await oip_infer.run(self.state.inference, model, decoded, info)
        return grpc_codec.encode_response(
            decoded, model.name, model.version_str, outputs, parameters
        )

    # ------------------------------------------------------------------ repository

    @rpc()
    async def RepositoryIndex(self, request: Any, context: Any, info: RequestInfo) -> Any:
        index = oip_models.repository_index(
            self.state.registry, self.state.settings.model_repository, request.ready
        )
        return json_format.ParseDict({"models": index}, service_pb2.RepositoryIndexResponse())

    @rpc()
    async def RepositoryModelLoad(self, request: Any, context: Any, info: RequestInfo) -> Any:
        _no_parameters(request)
        await self.state.control.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(self, request: Any, context: Any, info: RequestInfo) -> Any:
        _no_parameters(request)
        await self.state.control.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


def _honour_client_deadline(info: RequestInfo, context: Any, timeout_s: float) -> None:
    """A client deadline shorter than request_timeout_s becomes the request's deadline, so work
    the client will not wait for leaves the queue (the shared path counts from `info.started`)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining < timeout_s:
        info.started -= timeout_s - remaining


def _no_parameters(request: Any) -> None:
    # tritonclient sends unload_dependents=false on every unload; it changes nothing here.
    given = {k for k in request.parameters if k != "unload_dependents"}
    if given:
        raise ServiceError(
            ErrorKind.UNSUPPORTED,
            "load/unload parameters (config or file overrides) are not supported",
        )


def port_problem(host: str, port: int) -> str | None:
    """Why the gRPC port cannot be bound (checked before startup, for a one-line error), or None.
    The server binds it again at startup; this only turns the common case, a port already in
    use, into a readable message instead of a lifespan traceback."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        reason = e.strerror or str(e)
        return f"cannot listen for gRPC on {host}:{port} ({reason}); --grpc-port 0 turns it off"
    return None


async def start(state: ServiceState, tracing: Tracing | None = None) -> grpc.aio.Server:
    """The gRPC server listening on settings.host:grpc_port (RuntimeError if it cannot bind);
    with `tracing`, every call is traced."""
    settings = state.settings
    limit = settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 << 20)),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared listener
        ]
    )
    handlers = _method_handlers(InferenceServicer(state, tracing))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {e}") from None
    await server.start()
    logger.info("gRPC (Open Inference Protocol) on %s", address)
    return server
