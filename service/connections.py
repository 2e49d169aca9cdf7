"""Connection limits for uvicorn's HTTP/1.1 protocol (httptools), which has none of its own.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but not a connection that never
finishes its request headers (slowloris), and httptools takes headers of any size. This subclass
adds, per connection:

- a header deadline: the request line and headers must arrive within `header_timeout_s` of the
  connection opening or of the request's first byte, else the connection is closed (a client
  that sent nothing is closed silently; one stuck mid-headers gets 408 first);
- a header size cap: more than `max_header_bytes` before the headers end answers 431 and closes;
- a connection cap: past `max_connections` open connections a new one gets 503 and is closed.

and one fewer write per answer: uvicorn writes a response's status line and headers, then its
body, as two socket writes (two TCP segments, two wake-ups of the client); `HeadHoldingTransport`
holds the head back until the body's write, or the end of the event loop's turn (a streamed
answer whose first piece is not ready yet).

Error answers here are written before the app or its middleware exist for the request, so they
are plain JSON with `Connection: close` and a fresh X-Request-ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.request_info import new_request_id

logger = logging.getLogger(__name__)

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int


class HeadHoldingTransport:
    """A transport whose response heads wait for the next write, so head and body leave in one.

    A head (a write that starts with the status line and ends the headers) is held until the next
    write on the connection, or until the event loop's next turn (`call_soon`), whichever comes
    first; close, abort and write_eof send it first. Everything else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        elif data[:9] == b"HTTP/1.1 " and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Send a held head now (nothing followed it in this turn of the loop)."""
        if self._held:
            data, self._held = self._held, b""
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def limited_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` applied (for `uvicorn.Config(http=...)`)."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_bytes = 0
            self._reading_headers = True  # until this request's headers are complete
            self._header_started = False  # the request's first byte arrived
            self._header_timer: asyncio.TimerHandle | None = None
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= self._limits.max_connections:
                self._refused = True
                self.transport = transport
                logger.warning("max_connections (%d) reached", self._limits.max_connections)
                self._reject(503, f"over max_connections ({self._limits.max_connections})")
                return
            held = HeadHoldingTransport(transport, self.loop)
            super().connection_made(held)  # type: ignore[arg-type]
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            if self._refused:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._reading_headers:
                if not self._header_started:
                    self._header_started = True
                    self._header_bytes = 0
                    self._arm_header_timer()
                self._header_bytes += len(data)
            super().data_received(data)
            # Checked only while the headers are incomplete after this chunk: a chunk that
            # finished them may also carry body bytes, which are not header bytes.
            if self._reading_headers and self._header_bytes > self._limits.max_header_bytes:
                self._reject(
                    431, f"headers over max_header_bytes ({self._limits.max_header_bytes})"
                )

        def on_headers_complete(self) -> None:
            self._reading_headers = False
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # The request is in (the answer may have gone out before its body did): the next
            # bytes are the next request's. Its deadline starts with its first byte; until then
            # the connection is idle, which uvicorn's keep-alive timeout bounds.
            self._reading_headers, self._header_started = True, False
            self._header_bytes = 0  # this chunk's bytes belonged to the request that ended

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(
                self._limits.header_timeout_s, self._header_timeout
            )

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if not self._reading_headers:
                return
            if self._header_started:
                self._reject(
                    408, f"headers not received within {self._limits.header_timeout_s:g} s"
                )
            else:  # connected and silent: nothing to answer
                self.transport.close()

        def _reject(self, status: int, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            head = (
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
                + b"content-type: application/json\r\n"
                + b"content-length: %d\r\n" % len(body)
                + b"x-request-id: "
                + new_request_id().encode()
                + b"\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head + body)
            self.transport.close()

    return LimitedHttpToolsProtocol
