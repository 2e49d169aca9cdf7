"""The task routes' fast lane: POST /v1/classify, /v1/nli and /v1/translate answered without
FastAPI's routing, dependency solving, exception layers and response re-validation.

Those layers cost the event loop about 1 ms per request on this project's 2-core dev VM (py-spy
and the /metrics phase sums at one user: request span 5.5 ms, of which engine, queue and
tokenisation 4.3 ms), time that one user waits for and that the engine loses under load.

Same request models (pydantic-core validates the JSON bytes, strict as the route does), the same
answer functions (`routers.<task>.answer`), the same response models and error bodies. A request
the lane does not take as sent - another content type, a body its model refuses, a stream - goes
to the FastAPI route with its body replayed, so every validation message and the OpenAPI schema
stay FastAPI's. A client gone before its body arrived is answered 499 (client_closed, for the
log line and the metrics; the route would say 400). Authentication, the body limit and the in-flight gate are the request
middleware's, outside this layer, as for every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import INFO_KEY, ServiceState
from service.dependencies import watch_disconnect
from service.errors import ErrorKind, ServiceError
from service.http_errors import HTTP_KINDS, send_error
from service.request_info import RequestInfo
from service.routers import classify, nli, translate
from service.schemas import ClassifyRequest, NliRequest, TranslateRequest
from service.served_model import Disconnected

Answer = Callable[[ServiceState, Any, RequestInfo, Disconnected], Awaitable[BaseModel]]


class LaneRoute(NamedTuple):
    """What the request log, metrics and tracing read from `scope["route"]`: its path."""

    path: str


@dataclass(frozen=True)
class Lane:
    request: type[BaseModel]
    answer: Answer
    takes: Callable[[Any], bool] = lambda body: True  # else the FastAPI route answers


LANES: dict[str, Lane] = {
    "/v1/classify": Lane(ClassifyRequest, classify.answer),
    "/v1/nli": Lane(NliRequest, nli.answer),
    # a stream answers Server-Sent Events through the route's StreamingResponse
    "/v1/translate": Lane(TranslateRequest, translate.answer, lambda body: not body.stream),
}


class FastLane:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self.lanes = LANES if state.settings.fast_lane else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lanes.get(scope["path"]) if scope["type"] == "http" else None
        if lane is None or scope["method"] != "POST" or not _json_content(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        scope["route"] = LaneRoute(path)  # the request log and metrics label its route
        try:
            raw = await _read_body(receive)
        except HTTPException as e:  # over max_body_bytes (the request middleware's limit)
            kind = HTTP_KINDS.get(e.status_code, "http_error")
            await send_error(send, path, e.status_code, str(e.detail), kind, e.headers)
            return
        if raw is None:  # the client went away mid-body: logged and counted as 499, not 5xx
            closed = ServiceError(ErrorKind.CLIENT_CLOSED, "the client closed the request")
            await send_error(send, path, closed.status_code, closed.message, closed.kind.value)
            return
        try:
            body = lane.request.model_validate_json(raw)
        except ValidationError:
            body = None
        if body is None or not lane.takes(body):
            await self.app(scope, _replaying(raw, receive), send)
            return
        info: RequestInfo = scope[INFO_KEY]
        try:
            response = await lane.answer(self.state, body, info, watch_disconnect(receive))
        except ServiceError as e:
            await send_error(send, path, e.status_code, e.message, e.kind.value, e.headers())
            return
        payload = response.__pydantic_serializer__.to_json(response)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _json_content(scope: Scope) -> bool:
    """Content-Type application/json (any parameters): what the lane parses. FastAPI also takes
    other JSON types and a missing header; those go to it."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


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
