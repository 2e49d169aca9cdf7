"""The request middleware (plain ASGI, so it never buffers bodies or breaks disconnect detection).

For each HTTP request, before the app sees it: a request id (the client's X-Request-ID or a new
one), the API key check on guarded routes (401 before any byte of the body is read), and the body
size limit (413 naming max_body_bytes). On the way out: the request id on every response, a 500
included; `Connection: close` while draining (so keep-alive clients reconnect to another replica
instead of reusing a connection this process is about to close); the latency histogram and one
structured log line.

It sits in front of FastAPI's own layers (service/app.py), so it sees every error. One raised in
a route is answered (JSON 500) and logged by the app's handler inside, then re-raised for the
server by FastAPI's ServerErrorMiddleware: this layer stops it there, so uvicorn keeps the
connection of a complete answer. An exception with nothing answered yet is logged here with its
traceback and answered as a JSON 500 carrying the request id, on a connection that stays usable.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import UNAUTHORIZED_MESSAGE, bearer_token, is_guarded, key_matches
from service.context import INFO_KEY, ServiceState
from service.errors import ErrorKind
from service.http_errors import send_error
from service.request_info import RequestInfo, new_request_id
from service.shedding import InFlightGate, is_inference

access_log = logging.getLogger("nlpserve.access")
logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# An over-limit body is read and thrown away before the 413 goes out, up to these bounds: a
# server that answers and closes while the client is still sending makes the client's kernel see
# a reset, and most clients then report the reset instead of the 413 they were sent.
DISCARD_MAX_BYTES = 256 * 1024 * 1024
DISCARD_MAX_SECONDS = 10.0

# Health probes, scrapes and the playground's /v1/stats polls are logged at debug level: one
# info line per kubelet probe drowns the request log.
QUIET_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics", "/v1/stats"})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"the request body is over max_body_bytes ({limit} bytes)"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self.gate = InFlightGate(settings.request_timeout_s, settings.max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        headers = Headers(scope=scope)
        given_id = headers.get("x-request-id", "")
        request_id = given_id if _REQUEST_ID.match(given_id) else new_request_id()
        info = RequestInfo(request_id=request_id, started=loop.time())
        started = time.perf_counter()  # loop.time() may tick in whole milliseconds (uvloop)
        scope[INFO_KEY] = info
        path: str = scope["path"]
        limit = self.state.settings.max_body_bytes
        status = 0  # 0 until the response started
        finished = False  # the response's last byte was handed to the server
        close = False  # set when the body overflowed: the connection cannot be reused

        async def send_with_id(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if close or self.state.lifecycle.draining:
                    extra.append((b"connection", b"close"))
                # the playground shows it per request; a stream's is not known yet
                if info.batch_size is not None and not info.streamed:
                    extra.append((b"x-batch-size", str(info.batch_size).encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received, close
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    close = True
                    if message.get("more_body", False):
                        await _discard_body(receive)
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = headers.get("content-length", "")
            if is_guarded(path) and not self._authorized(headers):
                await send_error(
                    send_with_id, path, 401, UNAUTHORIZED_MESSAGE, ErrorKind.UNAUTHORIZED.value,
                    {"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
            elif declared.isdigit() and int(declared) > limit:
                close = True
                if headers.get("expect", "").lower() != "100-continue":
                    await _discard_body(receive)  # the client is sending it anyway
                await send_error(
                    send_with_id, path, 413, too_large_message(limit),
                    ErrorKind.PAYLOAD_TOO_LARGE.value,
                )  # fmt: skip
            elif is_inference(scope["method"], path):
                await self._gated(scope, receive_limited, send_with_id, lambda: status)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except Exception:
            if finished:
                # FastAPI's ServerErrorMiddleware (inside this one, see service/app.py) answered
                # and logged the error, then re-raised it for the server: re-raising here would
                # make uvicorn drop a connection whose answer is complete and keep-alive
                return
            logger.exception("unhandled error on %s %s", scope["method"], path)
            if status:  # the response had started: nothing valid can follow it
                raise
            await send_error(
                send_with_id, path, 500, "internal server error (details are in the server log)",
                ErrorKind.INTERNAL.value,
            )  # fmt: skip
        finally:
            self._record(scope, info, status or 500, time.perf_counter() - started)

    async def _gated(
        self, scope: Scope, receive: Receive, send: Send, status: Callable[[], int]
    ) -> None:
        """Run an inference request if the in-flight cap allows it, else answer 429 unparsed."""
        loop = asyncio.get_running_loop()
        retry_after = self.gate.try_enter(loop.time())
        if retry_after is not None:
            self.state.metrics.rejected.labels("", "in_flight_cap").inc()
            await send_error(
                send, scope["path"], 429,
                "the server is overloaded: too many requests in flight; retry later",
                ErrorKind.OVERLOADED.value, {"Retry-After": str(retry_after)},
            )  # fmt: skip
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave(loop.time(), answered=200 <= status() < 300)

    def _authorized(self, headers: Headers) -> bool:
        keys = self.state.settings.api_key_values()
        return not keys or key_matches(bearer_token(headers.get("authorization")), keys)

    def _record(self, scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        self.state.metrics.request_seconds.labels(
            route_path, info.model or "", str(status)
        ).observe(seconds)
        quiet = scope["path"] in QUIET_PATHS and status < 400
        access_log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %d",
            scope["method"],
            route_path,
            status,
            extra={
                "request_id": info.request_id,
                "method": scope["method"],
                "route": route_path,
                "model": info.model,
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
                "batch_size": info.batch_size,
            },
        )


async def _discard_body(receive: Receive) -> None:
    """Read what is left of the request body and drop it (bounded in bytes and time)."""
    discarded = 0
    deadline = asyncio.get_running_loop().time() + DISCARD_MAX_SECONDS
    while discarded <= DISCARD_MAX_BYTES:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return  # the client went away
        discarded += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
