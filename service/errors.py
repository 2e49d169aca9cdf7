"""One error type for the whole service and its one mapping to HTTP status codes.

Everything below the routers raises `ServiceError(kind, message)`; `status_code(kind)` is the only
place that decides what a client sees. Messages are written for the client: they name the limit or
the field at fault and never carry a stack trace or a server file path.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    BAD_REQUEST = (
        "bad_request"  # malformed JSON, bad tensor shape/datatype (Open Inference Protocol)
    )
    VALIDATION = "validation"  # well-formed but invalid request (empty list, wrong type, ...)
    UNAUTHORIZED = "unauthorized"  # API keys configured and none or a wrong one given
    NOT_FOUND = "not_found"  # unknown model, version or route
    PAYLOAD_TOO_LARGE = "payload_too_large"  # body, item count or text length over a limit
    OVERLOADED = "overloaded"  # model queue full: retry later
    CLIENT_CLOSED = "client_closed"  # the client went away before its answer was ready
    NOT_READY = "not_ready"  # model still loading, or failed to load
    SHUTTING_DOWN = "shutting_down"  # draining after SIGTERM: no new work
    TIMEOUT = "timeout"  # the request passed its deadline
    UNSUPPORTED = "unsupported"  # a protocol feature the service does not implement
    INTERNAL = "internal"  # a bug or an inference failure; details only in the server log


def status_code(kind: ErrorKind) -> int:
    """The HTTP status code for an error kind (the only such mapping in the service)."""
    return {
        ErrorKind.BAD_REQUEST: 400,
        ErrorKind.VALIDATION: 422,
        ErrorKind.UNAUTHORIZED: 401,
        ErrorKind.NOT_FOUND: 404,
        ErrorKind.PAYLOAD_TOO_LARGE: 413,
        ErrorKind.OVERLOADED: 429,
        ErrorKind.CLIENT_CLOSED: 499,  # nginx's convention; the client never reads it
        ErrorKind.NOT_READY: 503,
        ErrorKind.SHUTTING_DOWN: 503,
        ErrorKind.TIMEOUT: 504,
        # A request for a protocol feature the server lacks is still the client's input: 400,
        # as Triton answers it (no client input may yield a 5xx).
        ErrorKind.UNSUPPORTED: 400,
        ErrorKind.INTERNAL: 500,
    }[kind]


class ServiceError(Exception):
    """A failure with a client-facing message; `retry_after` (seconds) goes into Retry-After."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    @property
    def status_code(self) -> int:
        return status_code(self.kind)

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.kind is ErrorKind.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        return headers


def shorten(value: str, limit: int = 80) -> str:
    """A client-supplied string made safe to quote in a message (repr, bounded length)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
