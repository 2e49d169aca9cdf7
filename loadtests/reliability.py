"""Reliability measurements for reports/reliability.md: overload, SIGTERM, slow clients, soak.

    python -m loadtests.reliability overload --repository DIR [--seconds 20] [--users 256]
    python -m loadtests.reliability sigterm  --repository DIR [--clients 32]
    python -m loadtests.reliability slow     --repository DIR [--silent 200] [--trickling 50]
    python -m loadtests.reliability soak     --repository DIR [--minutes 30] [--clients 16]

Each starts `python -m service` on the repository's `sentiment` model (a copy holding only it),
prints one JSON object of measured figures and exits 1 when a promise was broken (a 5xx, a lost
request, a connection error where none is allowed). Benchmarks, not tests: `tests/` holds the
bounded versions that run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtests.raw_http import RawHttpPool
from loadtests.servers import nlpserve_command, running_server

TEXT = "a thoughtful, quietly moving film that stays with you long after the credits"
QUIET = {"NLPSERVE_INTRA_OP_THREADS": "1", "NLPSERVE_LOG_LEVEL": "warning"}


@contextmanager
def sentiment_server(
    repository: Path, cpus: str | None = None, **settings: str
) -> Iterator[tuple[str, Any]]:
    """The server on a copy of the repository holding only `sentiment`; pinned to `cpus`
    (taskset's list) when given, so a load generator pinned elsewhere does not compete with it."""
    with tempfile.TemporaryDirectory() as tmp:
        only = Path(tmp) / "repository"
        shutil.copytree(repository / "sentiment", only / "sentiment")
        env = {**QUIET, **{f"NLPSERVE_{k.upper()}": v for k, v in settings.items()}}
        command = nlpserve_command(only)
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        with running_server(command, env=env) as (host, process):
            yield host, process


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def closed_loop(host: str, clients: int, seconds: float, texts: int = 1) -> dict[str, Any]:
    """`clients` users sending `texts` texts per request, back to back, for `seconds`."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=host, timeout=60) as http:

        async def user() -> None:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    reply = await http.post("/v1/classify", json={"texts": [TEXT] * texts})
                    statuses[str(reply.status_code)] += 1
                    latencies.append(time.monotonic() - started)
                except httpx.TransportError as e:
                    statuses[type(e).__name__] += 1

        await asyncio.gather(*(user() for _ in range(clients)))
    ok = statuses["200"]
    return {
        "requests_per_s": round(ok / seconds, 1),
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p95_ms": _ms(percentile(latencies, 0.95)),
        "statuses": dict(statuses),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ----------------------------------------------------------------------------- overload


class Burst:
    """What a burst's answers said: statuses, when answers came, the Retry-After values."""

    def __init__(self, texts: int) -> None:
        self.body = {"texts": [TEXT] * texts}
        self.raw_body = json.dumps(self.body).encode()
        self.statuses: Counter[str] = Counter()
        self.answered_at: list[float] = []
        self.retry_after: list[tuple[float, int]] = []  # (when, seconds)

    async def send(self, http: httpx.AsyncClient) -> None:
        try:
            reply = await http.post("/v1/classify", json=self.body)
        except httpx.TransportError as e:
            self.statuses[type(e).__name__] += 1
            return
        self.record(reply.status_code, reply.headers)

    async def send_raw(self, pool: RawHttpPool) -> None:
        try:
            status, headers = await pool.post_json("/v1/classify", self.raw_body)
        except (OSError, asyncio.IncompleteReadError) as e:
            self.statuses[type(e).__name__] += 1
            return
        self.record(status, headers)

    def record(self, status: int, headers: Mapping[str, str]) -> None:
        self.statuses[str(status)] += 1
        self.answered_at.append(time.monotonic())
        if status == 429:
            self.retry_after.append((time.monotonic(), int(headers["retry-after"])))

    def result(
        self, capacity: float, sending_s: float, burst_end: float, ready_after: float
    ) -> dict[str, Any]:
        """The figures; the drain time runs from `burst_end` to the last answer, and the
        Retry-After values compared with it are those given in the burst's last 2 s."""
        sent = sum(self.statuses.values())
        drain_s = max(0.0, max(self.answered_at, default=burst_end) - burst_end)
        late = [s for t, s in self.retry_after if t >= burst_end - 2]
        return {
            "capacity_requests_per_s": capacity,
            "offered_requests_per_s": round(sent / sending_s, 1),
            "offered_x_capacity": round(sent / sending_s / capacity, 1),
            "sent": sent,
            "statuses": dict(self.statuses),
            "server_errors": sum(v for k, v in self.statuses.items() if k.startswith("5")),
            "connection_errors": sum(v for k, v in self.statuses.items() if not k.isdigit()),
            "measured_drain_s": round(drain_s, 2),
            "retry_after_last_2s": dict(Counter(late)),
            "ready_after_burst_s": round(ready_after, 3),
        }


async def overload(host: str, seconds: float, users: int, texts: int) -> dict[str, Any]:
    """`users` users sending back to back for `seconds`, ignoring Retry-After (so the offered
    rate is a multiple of capacity), then stopping together."""
    capacity = (await closed_loop(host, 8, 5, texts))["requests_per_s"]
    burst = Burst(texts)
    burst_end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=host, timeout=120, limits=limits) as http:

        async def user() -> None:
            while time.monotonic() < burst_end:
                await burst.send(http)

        await asyncio.gather(*(user() for _ in range(users)))
        ready_after = await _seconds_until_ready(http)
    return burst.result(capacity, seconds, burst_end, ready_after)


async def overload_open_loop(
    host: str, seconds: float, factor: float, texts: int
) -> dict[str, Any]:
    """Arrivals at `factor` x the measured capacity whether or not answers came back (open
    loop: the offered rate does not fall when the server slows down)."""
    capacity = (await closed_loop(host, 8, 5, texts))["requests_per_s"]
    rate = factor * capacity
    burst = Burst(texts)
    pool = RawHttpPool.for_url(host)  # httpx would be the bottleneck (see loadtests.raw_http)
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    burst_end = started + seconds
    while (now := time.monotonic()) < burst_end:
        due = started + len(tasks) / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(burst.send_raw(pool)))
    sending_s = time.monotonic() - started
    await asyncio.gather(*tasks)
    pool.close()
    async with httpx.AsyncClient(base_url=host, timeout=120) as http:
        ready_after = await _seconds_until_ready(http)
    return burst.result(capacity, sending_s, burst_end, ready_after)


async def _seconds_until_ready(http: httpx.AsyncClient) -> float:
    started = time.monotonic()
    while (await http.get("/v2/health/ready")).status_code != 200:
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# ----------------------------------------------------------------------------- SIGTERM


async def sigterm(host: str, process: Any, clients: int) -> dict[str, Any]:
    """`clients` users on kept-alive connections; SIGTERM after 5 s; count every outcome."""
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=host, timeout=60) as http:

        async def user() -> None:
            while True:
                try:
                    reply = await http.post("/v1/classify", json={"texts": [TEXT]})
                    closes = reply.headers.get("connection") == "close"
                    outcomes[f"{reply.status_code}{' close' if closes else ''}"] += 1
                except httpx.ConnectError:
                    outcomes["refused"] += 1
                    return
                except httpx.TransportError as e:
                    outcomes[f"lost ({type(e).__name__})"] += 1
                    return

        users = [asyncio.create_task(user()) for _ in range(clients)]
        await asyncio.sleep(5)
        process.send_signal(signal.SIGTERM)
        await asyncio.gather(*users)
    exit_code = await asyncio.to_thread(process.wait, 60)
    sent = sum(outcomes.values())
    lost = sum(v for k, v in outcomes.items() if k.startswith("lost"))
    return {"sent": sent, "outcomes": dict(outcomes), "lost": lost, "exit_code": exit_code}


# ----------------------------------------------------------------------------- slow clients


async def slow_clients(host: str, silent: int, trickling: int) -> dict[str, Any]:
    """Latency of 4 normal users alone, then while `silent` sockets say nothing and
    `trickling` ones send a header byte a second."""
    port = int(host.rsplit(":", 1)[1])
    alone = await closed_loop(host, 4, 10)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(silent + trickling)]
    for sock in sockets[silent:]:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for _ in range(10):
            for sock in sockets[silent:]:
                with suppress(OSError):
                    sock.sendall(b"X")
            await asyncio.sleep(1)

    trickler = asyncio.create_task(trickle())
    held = await closed_loop(host, 4, 10)
    await trickler
    for sock in sockets:
        sock.close()
    return {"alone": alone, "with_slow_clients": held, "held_sockets": len(sockets)}


# ----------------------------------------------------------------------------- soak


async def soak(host: str, process: Any, minutes: float, clients: int) -> dict[str, Any]:
    """`clients` users for `minutes`; the server's RSS sampled every 10 s."""
    server = psutil.Process(process.pid)
    samples: list[tuple[float, int]] = []
    stop = time.monotonic() + minutes * 60

    async def sample() -> None:
        while time.monotonic() < stop:
            samples.append((time.monotonic(), server.memory_info().rss))
            await asyncio.sleep(10)

    sampler = asyncio.create_task(sample())
    load = await closed_loop(host, clients, minutes * 60)
    await sampler
    # Growth from the first minute's level (allocator and caches settle while it warms up).
    settled = [rss for t, rss in samples if t - samples[0][0] >= 60] or [s[1] for s in samples]
    first, last = settled[0], statistics.mean(rss for _, rss in samples[-3:])
    return {
        **load,
        "rss_start_mb": round(first / 2**20, 1),
        "rss_end_mb": round(last / 2**20, 1),
        "rss_growth_pct": round(100 * (last - first) / first, 2),
    }


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.reliability", description=__doc__)
    parser.add_argument("scenario", choices=["overload", "sigterm", "slow", "soak"])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20, help="overload burst (default 20)")
    parser.add_argument("--users", type=int, default=256, help="overload users (256)")
    parser.add_argument(
        "--open-loop-factor", type=float, help="overload: arrivals at this x capacity instead"
    )
    parser.add_argument(
        "--request-timeout-s", default="2", help="overload: the server's deadline (2 s)"
    )
    parser.add_argument("--texts", type=int, default=4, help="texts per overload request")
    parser.add_argument("--clients", type=int, default=None, help="sigterm 32, soak 16")
    parser.add_argument("--silent", type=int, default=200)
    parser.add_argument("--trickling", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a server setting (e.g. max_in_flight=100000), repeatable",
    )
    parser.add_argument("--server-cpus", help="pin the server (taskset list, e.g. 0)")
    parser.add_argument("--client-cpus", help="pin this load generator (e.g. 1)")
    args = parser.parse_args(argv)
    settings = {
        "slow": {"header_timeout_s": "30"},
        "overload": {"request_timeout_s": args.request_timeout_s},
    }.get(args.scenario, {})
    settings.update(item.split("=", 1) for item in args.set)
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    with sentiment_server(args.repository, args.server_cpus, **settings) as (host, process):
        if args.scenario == "overload":
            if args.open_loop_factor:
                result = asyncio.run(
                    overload_open_loop(host, args.seconds, args.open_loop_factor, args.texts)
                )
            else:
                result = asyncio.run(overload(host, args.seconds, args.users, args.texts))
            broken = result["server_errors"] or result["connection_errors"]
        elif args.scenario == "sigterm":
            result = asyncio.run(sigterm(host, process, args.clients or 32))
            broken = result["lost"] or result["exit_code"] != 0
        elif args.scenario == "slow":
            result = asyncio.run(slow_clients(host, args.silent, args.trickling))
            broken = set(result["with_slow_clients"]["statuses"]) != {"200"}
        else:
            result = asyncio.run(soak(host, process, args.minutes, args.clients or 16))
            broken = set(result["statuses"]) != {"200"} or result["rss_growth_pct"] >= 5
    result["settings"] = settings
    result["machine"] = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    print(json.dumps(result, indent=2))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
