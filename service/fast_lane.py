"""The hot inference routes' fast lane: POST /v1/classify, /v1/nli, /v1/translate and the Open
Inference Protocol's /v2/models/{name}[/versions/{version}]/infer, answered without FastAPI's
routing, dependency solving, exception layers and response re-validation.

Those layers cost the event loop 0.3-0.35 ms of CPU per request on this project's 2-core dev VM
(`python -m loadtests.loop_cost`, reports/serving-benchmark.md), a third of what the loop spends
per request, time that one user waits for and that the engine loses under load.

Task routes: the same request models (pydantic-core validates the JSON bytes, strict as the route
does), the same answer functions (`routers.<task>.answer`), the same response models and error
bodies. A streamed translation is admitted by the route's own step (`translate.open_stream`) and
its events sent straight on the ASGI `send` (`streaming.send_events`: the route's headers and
frames without StreamingResponse's task group). A request the lane does not take as sent -
another content type, a body its model refuses - goes to the FastAPI route with its body
replayed, so every validation message and the OpenAPI schema stay FastAPI's. Infer: the route's
own steps (`routers.v2.answer_infer`: the model, the body, decompression, the protocol's parser
and encoder) minus FastAPI around them. A client gone before its body arrived is answered 499
(client_closed, for the log line and the metrics; the route would say 400). Authentication, the
body limit and the in-flight gate are the request middleware's, outside this layer, as for every
route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import INFO_KEY, ServiceState
from service.dependencies import watch_disconnect
from service.errors import ErrorKind, ServiceError
from service.http_errors import HTTP_KINDS, send_answer, send_error, send_service_error
from service.request_info import RequestInfo
from service.routers import classify, nli, translate, v2
from service.schemas import ClassifyRequest, NliRequest, TranslateRequest
from service.served_model import Disconnected
from service.streaming import send_events

Answer = Callable[[ServiceState, Any, RequestInfo, Disconnected], Awaitable[BaseModel]]


class LaneRoute(NamedTuple):
    """What the request log, metrics and tracing read from `scope["route"]`: its path."""

    path: str


@dataclass(frozen=True)
class Lane:
    request: type[BaseModel]
    answer: Answer


# The infer routes of service/routers/v2.py, as FastAPI matches them ({name} is one path segment)
V2_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
V2_INFER_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")

LANES: dict[str, Lane] = {
    "/v1/classify": Lane(ClassifyRequest, classify.answer),
    "/v1/nli": Lane(NliRequest, nli.answer),
    "/v1/translate": Lane(TranslateRequest, translate.answer),
}


class FastLane:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self.enabled = state.settings.fast_lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        lane = LANES.get(scope["path"])
        if lane is not None and _json_content(scope):
            await self._task(lane, scope, receive, send)
            return
        infer = V2_INFER.match(scope["path"])
        if infer is not None:
            await self._infer(infer["name"], infer["version"], scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _task(self, lane: Lane, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        scope["route"] = LaneRoute(path)  # the request log and metrics label its route
        raw = await _read_body(path, receive, send)
        if raw is None:
            return  # answered
        try:
            body = lane.request.model_validate_json(raw)
        except ValidationError:
            body = None
        if body is None:
            await self.app(scope, _replaying(raw, receive), send)
            return
        info: RequestInfo = scope[INFO_KEY]
        if isinstance(body, TranslateRequest) and body.stream:
            await self._stream(body, info, path, receive, send)
            return
        try:
            response = await lane.answer(self.state, body, info, watch_disconnect(receive))
        except ServiceError as e:
            await send_service_error(send, path, e)
            return
        payload = response.__pydantic_serializer__.to_json(response)
        await send_answer(send, 200, payload, {"content-type": "application/json"})

    async def _stream(
        self, body: TranslateRequest, info: RequestInfo, path: str, receive: Receive, send: Send
    ) -> None:
        """A streamed translation: refused as the route refuses it, else its events sent here."""
        try:
            stream = await translate.open_stream(self.state, body, info)
        except ServiceError as e:
            await send_service_error(send, path, e)
            return
        await send_events(stream, watch_disconnect(receive), send)

    async def _infer(
        self, name: str, version: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The Open Inference Protocol's infer, in the route's order: the model, then the body."""
        path = scope["path"]
        scope["route"] = LaneRoute(V2_INFER_ROUTES[version is not None])
        try:
            model = self.state.registry.get(name, version)
        except ServiceError as e:
            await send_service_error(send, path, e)
            return
        raw = await _read_body(path, receive, send)
        if raw is None:
            return  # answered
        info: RequestInfo = scope[INFO_KEY]
        try:
            content, headers = await v2.answer_infer(
                self.state, model, raw, Headers(scope=scope), info, watch_disconnect(receive)
            )
        except ServiceError as e:
            await send_service_error(send, path, e)
            return
        await send_answer(send, 200, content, headers)


def _json_content(scope: Scope) -> bool:
    """Content-Type application/json (any parameters): what the lane parses. FastAPI also takes
    other JSON types and a missing header; those go to it."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def _read_body(path: str, receive: Receive, send: Send) -> bytes | None:
    """The whole body; None when it was answered instead: over max_body_bytes (413, the request
    middleware's limit), or the client gone mid-body (499 client_closed, for the log line and
    the metrics, not a 5xx; the FastAPI route would say 400)."""
    chunks = []
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                closed = ServiceError(ErrorKind.CLIENT_CLOSED, "the client closed the request")
                await send_service_error(send, path, closed)
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
    except HTTPException as e:
        kind = HTTP_KINDS.get(e.status_code, "http_error")
        await send_error(send, path, e.status_code, str(e.detail), kind, e.headers)
        return None


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """`receive` as if the body had not been read yet."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay
