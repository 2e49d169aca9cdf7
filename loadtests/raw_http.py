"""A minimal HTTP/1.1 client on asyncio streams, for open-loop load.

An open-loop generator must send at its arrival rate whatever the server does; httpx's pool,
at a few hundred requests per second and hundreds of connections, spends more CPU per request
than the server's 429 path does, so its own backlog (requests "sent" but not yet written) would
be measured as the server's drain time. This client writes prebuilt request bytes on kept-alive
connections and reads a Content-Length answer: tens of microseconds of client CPU per request.

Closed loops need it too: one httpx.AsyncClient shared by 32 users spent 3-4 ms of CPU per
request (py-spy: httpcore's pool scans every connection for each request, `is_socket_readable`
and `getpeername` on each), was busy 95% of the time and so set the req/s of
loadtests/translation_bench.py, while the server idled 60% of it. `request` also returns the
body, and reads chunked answers (Server-Sent Events) chunk by chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from loadtests.stats import AGGREGATED, EndpointStats


class RawHttpPool:
    """Kept-alive connections to one host; a new one is opened whenever none is idle."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    @classmethod
    def for_url(cls, url: str) -> RawHttpPool:
        """A pool for `http://host:port` (what loadtests.servers.running_server yields)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    async def post_json(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        """POST `body` as JSON; the answer's status and lower-cased headers (body dropped).
        Raises OSError or asyncio.IncompleteReadError when the connection fails."""
        status, headers, _ = await self.request(path, body)
        return status, headers

    async def request(
        self, path: str, body: bytes, on_chunk: Callable[[bytes], None] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """POST `body` as JSON; status, lower-cased headers and body. A chunked answer is
        handed to `on_chunk` chunk by chunk as it arrives (and returned whole)."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        try:
            status_line = await reader.readline()
            if not status_line:
                raise asyncio.IncompleteReadError(b"", None)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while size := int((await reader.readline()).split(b";")[0], 16):
                    chunk = (await reader.readexactly(size + 2))[:-2]  # data, CRLF
                    if on_chunk is not None:
                        on_chunk(chunk)
                    chunks.append(chunk)
                while await reader.readline() not in (b"\r\n", b""):  # trailers
                    pass
                data = b"".join(chunks)
            else:
                data = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return int(status_line.split()[1]), headers, data

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def closed_loop(
    host: str, path: str, bodies: Sequence[bytes], users: int, duration_s: float
) -> tuple[list[float], int]:
    """`users` clients POSTing `bodies` in turn to `path` for `duration_s` seconds, each sending
    its next as soon as the last was answered: every latency (s) and the non-200 count."""
    pool = RawHttpPool.for_url(host)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration_s

    async def user(index: int) -> None:
        nonlocal errors
        i = index
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status, _ = await pool.post_json(path, bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - started)
            errors += status != 200
            i += users

    try:
        await asyncio.gather(*(user(k) for k in range(users)))
    finally:
        pool.close()
    return latencies, errors


def closed_loop_stats(
    host: str, path: str, bodies: Sequence[bytes], users: int, duration_s: float
) -> EndpointStats:
    """`closed_loop`, summarised as Locust's Aggregated row is (rate over the loop's wall time,
    latency percentiles in ms, non-200 answers as failures)."""
    started = time.perf_counter()
    latencies, errors = asyncio.run(closed_loop(host, path, bodies, users, duration_s))
    elapsed = time.perf_counter() - started
    ms = sorted(1000 * s for s in latencies) or [0.0]

    def at(q: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * q))]

    return EndpointStats(
        method="",
        name=AGGREGATED,
        requests=len(latencies),
        failures=errors,
        rps=len(latencies) / elapsed,
        avg_ms=sum(ms) / len(ms),
        p50_ms=at(0.5),
        p95_ms=at(0.95),
        p99_ms=at(0.99),
        max_ms=ms[-1],
    )
