"""gRPC against HTTP JSON: the Open Inference Protocol's two transports on one nlpserve server,
same model, same batching, same closed-loop load.

    python -m loadtests.bench_protocols --repository runs/demo/model_repository \\
        [--model sentiment] [--users 32] [--seconds 20] [--rounds 2] [--report FILE]

One server (`python -m service`, HTTP and gRPC on free loopback ports). `--users` concurrent
clients in one asyncio process, each sending one text per request with no think time: over HTTP
a JSON `POST /v2/models/<m>/infer` (httpx), over gRPC a `ModelInfer` with the text in
`raw_input_contents`, as tritonclient.grpc sends it (grpcio's asyncio stub). The transports
alternate for `--rounds` rounds (after a warm-up of each), so drift in what else the machine
runs hits both alike. Printed (and written to --report as markdown): requests/s, p50/p95/p99 and
errors per transport and round, and gRPC's throughput relative to HTTP's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import platform
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import httpx
from tritonclient.grpc import service_pb2, service_pb2_grpc

from loadtests.sample_texts import REVIEW_SENTENCES
from loadtests.servers import free_port, nlpserve_command, running_server
from loadtests.tool_cli import command_line, print_report, tool_parser

PROG = "python -m loadtests.bench_protocols"


@dataclass
class Round:
    transport: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] * 1000

    def line(self) -> str:
        return (
            f"| {self.transport} | {self.rate:.1f} | {self.percentile(50):.1f} | "
            f"{self.percentile(95):.1f} | {self.percentile(99):.1f} | {self.errors} |"
        )


async def _closed_loop(
    send: Callable[[str], Awaitable[None]], users: int, seconds: float, result: Round
) -> None:
    texts = itertools.cycle(REVIEW_SENTENCES)
    stop_at = time.perf_counter() + seconds

    async def user() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await send(next(texts))
            except Exception:  # counted, not raised: the load goes on
                result.errors += 1
                continue
            result.latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(user() for _ in range(users)))


async def run_http(url: str, model: str, users: int, seconds: float) -> Round:
    result = Round("HTTP JSON", seconds)
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def send(text: str) -> None:
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
            response = await client.post(f"/v2/models/{model}/infer", json=body)
            response.raise_for_status()

        await _closed_loop(send, users, seconds, result)
    return result


async def run_grpc(address: str, model: str, users: int, seconds: float) -> Round:
    result = Round("gRPC", seconds)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def send(text: str) -> None:
            request = service_pb2.ModelInferRequest(model_name=model)
            request.inputs.add(name="text", datatype="BYTES", shape=[1])
            encoded = text.encode()
            request.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
            await stub.ModelInfer(request, timeout=60)

        await _closed_loop(send, users, seconds, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(PROG, warmup_seconds=3.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    grpc_port = free_port()
    command = [*nlpserve_command(args.repository), "--grpc-port", str(grpc_port)]
    rounds: list[Round] = []
    with running_server(command) as (url, _):
        address = f"127.0.0.1:{grpc_port}"
        asyncio.run(run_http(url, args.model, args.users, args.warmup_seconds))
        asyncio.run(run_grpc(address, args.model, args.users, args.warmup_seconds))
        for _ in range(args.rounds):
            rounds.append(asyncio.run(run_http(url, args.model, args.users, args.seconds)))
            rounds.append(asyncio.run(run_grpc(address, args.model, args.users, args.seconds)))

    def total_rate(transport: str) -> float:
        chosen = [r for r in rounds if r.transport == transport]
        return sum(len(r.latencies) for r in chosen) / sum(r.seconds for r in chosen)

    ratio = total_rate("gRPC") / total_rate("HTTP JSON")
    lines = [
        command_line(PROG, argv),
        "",
        f"Model {args.model}, {args.users} closed-loop clients, {args.seconds:g} s per round, "
        f"{args.rounds} rounds per transport; {platform.machine()}, Python "
        f"{platform.python_version()}; client and server on the same machine.",
        "",
        "| transport | requests/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
        *(r.line() for r in rounds),
        "",
        f"gRPC throughput / HTTP JSON throughput: {ratio:.3f}",
    ]
    print_report(lines, args.report)
    if args.report:
        results = {r.transport + f" {i}": r.rate for i, r in enumerate(rounds)}
        args.report.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
