"""HeadHoldingTransport (service/connections.py): a response's head and body leave in one write.

The transport below it records its calls; the loop is a real asyncio loop, whose turns decide
when a head with nothing after it is sent. End-to-end, every HTTP test of the suite goes through
it (uvicorn's protocol is built with it in `limited_protocol`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.connections import HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


async def _turn() -> None:
    """Let the loop run the callbacks scheduled so far (one turn)."""
    await asyncio.sleep(0)


def _held() -> tuple[HeadHoldingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return HeadHoldingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


def test_head_and_body_written_in_the_same_turn_leave_as_one_write() -> None:
    async def check() -> None:
        transport, inner = _held()
        transport.write(HEAD)
        assert inner.calls == []  # held: the body may follow in this turn
        transport.write(b"{}")
        assert inner.calls == [("write", HEAD + b"{}")]
        await _turn()  # the scheduled flush finds nothing held
        assert inner.calls == [("write", HEAD + b"{}")]

    asyncio.run(check())


def test_a_head_with_nothing_after_it_leaves_at_the_next_turn() -> None:
    """A streamed answer whose first piece is not ready: its client gets the head at once."""

    async def check() -> None:
        transport, inner = _held()
        transport.write(HEAD.replace(b"content-length: 2", b"transfer-encoding: chunked"))
        await _turn()
        assert [name for name, _ in inner.calls] == ["write"]
        assert inner.calls[0][1].startswith(b"HTTP/1.1 200 OK")
        transport.write(b"5\r\nhello\r\n")  # the piece: written as it comes, not held
        assert inner.calls[-1] == ("write", b"5\r\nhello\r\n")

    asyncio.run(check())


def test_bodies_and_whole_answers_are_never_held() -> None:
    async def check() -> None:
        transport, inner = _held()
        whole = HEAD + b"{}"  # head and body in one write (the protocol's own 4xx answers)
        transport.write(whole)
        transport.write(b"0\r\n\r\n")  # a chunked answer's end: not a head
        assert inner.calls == [("write", whole), ("write", b"0\r\n\r\n")]

    asyncio.run(check())


def test_close_and_write_eof_send_the_head_first_abort_drops_it() -> None:
    async def check() -> None:
        transport, inner = _held()
        transport.write(HEAD)
        transport.close()
        assert inner.calls == [("write", HEAD), ("close", None)]
        await _turn()  # the flush scheduled with the head does not write on a closing transport
        assert len(inner.calls) == 2

        transport, inner = _held()
        transport.write(HEAD)
        transport.write_eof()
        assert inner.calls == [("write", HEAD), ("write_eof", None)]

        transport, inner = _held()
        transport.write(HEAD)
        transport.abort()
        await _turn()
        assert inner.calls == [("abort", None)]

    asyncio.run(check())


def test_everything_else_is_the_wrapped_transports() -> None:
    async def check() -> None:
        transport, inner = _held()
        transport.write(HEAD)
        assert transport.get_write_buffer_size() == 7 + len(HEAD)  # held bytes are buffered bytes
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
        assert not transport.is_closing()
        transport.writelines([b"{", b"}"])
        assert inner.calls == [("write", HEAD + b"{}")]

    asyncio.run(check())
