"""Exception handlers: every error leaves as JSON `{"error": "..."}` with its status code.

The task API (/v1) adds `"type"` (the error kind); the Open Inference Protocol routes keep the
protocol's exact shape. Unexpected exceptions are logged with their traceback and answer a bare
500 message: no stack trace ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Send

from service.errors import ErrorKind, ServiceError

logger = logging.getLogger(__name__)

HTTP_KINDS = {
    401: ErrorKind.UNAUTHORIZED.value,
    404: ErrorKind.NOT_FOUND.value,
    405: "method_not_allowed",
    413: ErrorKind.PAYLOAD_TOO_LARGE.value,
    415: "unsupported_media_type",
}


# FastAPI wraps what went wrong while decoding a JSON body in a bare 400; say what it was.
_PARSE_FAILURES: dict[type[BaseException], str] = {
    UnicodeDecodeError: "the body is not valid UTF-8 (JSON must be UTF-8)",
    RecursionError: "the body is not valid JSON: nested too deeply",
}


def error_body(path: str, message: str, kind: str) -> dict[str, Any]:
    if path == "/v2" or path.startswith("/v2/"):
        return {"error": message}
    return {"error": message, "type": kind}


async def send_error(
    send: Send,
    path: str,
    status: int,
    message: str,
    kind: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """The JSON error answer, sent on a bare ASGI `send` (layers in front of FastAPI's handlers:
    the request middleware, the fast lane)."""
    body = json.dumps(error_body(path, message, kind)).encode()
    await send_answer(send, status, body, {"content-type": "application/json", **(headers or {})})


async def send_service_error(send: Send, path: str, error: ServiceError) -> None:
    """`error` answered as the app's ServiceError handler answers it, on a bare ASGI `send`."""
    await send_error(
        send, path, error.status_code, error.message, error.kind.value, error.headers()
    )


async def send_answer(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """A whole response (`headers` plus its Content-Length) on a bare ASGI `send`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for p in parts:
        text += f"[{p}]" if p.isdigit() else (f".{p}" if text else p)
    return text or "body"


def describe_validation(error: RequestValidationError) -> str:
    messages = []
    for e in error.errors()[:5]:
        if tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes):
            # FastAPI parses JSON only when the Content-Type says so; otherwise the model gets
            # the raw bytes and pydantic's own message ("a valid dictionary") misleads.
            messages.append(
                "the body must be a JSON object sent with Content-Type: application/json"
            )
        elif e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            messages.append(f"the body is not valid JSON ({detail})")
        else:
            messages.append(f"{_where(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}")
    more = len(error.errors()) - 5
    if more > 0:
        messages.append(f"and {more} more")
    return "; ".join(messages)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            error_body(request.url.path, exc.message, exc.kind.value),
            status_code=exc.status_code,
            headers=exc.headers(),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(request.url.path, describe_validation(exc), ErrorKind.VALIDATION.value),
            status_code=422,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400:  # FastAPI could not decode the body it was about to parse
            kind = ErrorKind.BAD_REQUEST.value
            cause = exc.__cause__
            message = "the body is not valid JSON"
            if cause is not None:
                message = _PARSE_FAILURES.get(type(cause), message)
        return JSONResponse(
            error_body(request.url.path, message, kind),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse(
            error_body(request.url.path, "internal server error", ErrorKind.INTERNAL.value),
            status_code=500,
        )
