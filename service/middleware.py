"""The request middleware (plain ASGI, so it never buffers bodies or breaks disconnect detection).

For each HTTP request: a request id (the client's X-Request-ID or a new one, echoed back), the
body size limit (413 naming max_body_bytes), and
when it ends the latency histogram and one structured log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import RequestInfo
from service.errors import ErrorKind
from service.http_errors import error_body
from service.logs import access_level

if TYPE_CHECKING:
    from service.dependencies import ServiceState

access_log = logging.getLogger("nlpserve.access")

INFO_KEY = "nlpserve.request"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over max_body_bytes ({limit} bytes)")


class RequestMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        headers = Headers(scope=scope)
        given_id = headers.get("x-request-id", "")
        request_id = given_id if _REQUEST_ID.match(given_id) else uuid.uuid4().hex
        info = RequestInfo(request_id=request_id, started=loop.time())
        started = time.perf_counter()  # loop.time() may tick in whole milliseconds (uvloop)
        scope[INFO_KEY] = info
        limit = self.state.settings.max_body_bytes
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
                if info.batch_size is not None:  # the playground shows it per request
                    message["headers"].append((b"x-batch-size", str(info.batch_size).encode()))
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                await _send_too_large(send_with_id, scope["path"], limit)
            else:
                await self.app(scope, receive_limited, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            self.state.metrics.request_seconds.labels(
                route_path, info.model or "", str(status)
            ).observe(seconds)
            access_log.log(
                access_level(route_path),
                "%s %s %d",
                scope["method"],
                route_path,
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route_path,
                    "model": info.model,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 2),
                    "batch_size": info.batch_size,
                },
            )


async def _send_too_large(send: Send, path: str, limit: int) -> None:
    message = f"the request body is over max_body_bytes ({limit} bytes)"
    body = json.dumps(error_body(path, message, ErrorKind.PAYLOAD_TOO_LARGE.value)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
