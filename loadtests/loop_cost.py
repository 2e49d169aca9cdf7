"""What one classification request costs the server's event loop, setting against setting.

    python -m loadtests.loop_cost --repository REPO --users 1 32 --duration 8 --rounds 3 \\
        --variant lane:fast_lane=true --variant route:fast_lane=false

Each round runs every variant in turn (rounds alternate, so a VM whose speed drifts within the
hour moves every variant alike), each at every user count: nlpserve serving REPO with the
variant's NLPSERVE_* settings, a closed loop of one-text POST /v1/classify requests (with
--protocol v2, the Open Inference Protocol's infer; SST-2 dev texts, or the bundled sample) from
the raw HTTP client (tens of microseconds of client CPU per request; Locust's 1.5 ms would blur
the figures), after a short warm-up. From psutil, around the loop: CPU ms per request of the
event loop's thread (the server's main thread: HTTP parsing, the middleware, validation,
tokenization, the answer) and of the whole process (the engine's threads too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from loadtests.bench_config import Variant
from loadtests.bench_serving import parse_variant
from loadtests.payloads import default_data_dir, load_payloads, resolve_data_dir
from loadtests.raw_http import closed_loop_stats
from loadtests.servers import nlpserve_command, running_server
from loadtests.stats import EndpointStats

WARMUP_S = 2.0  # before each point: connections open, the engine's threads and caches warm


@dataclass(frozen=True)
class Point:
    round: int
    variant: str
    users: int
    requests: int
    req_per_s: float
    p50_ms: float
    p95_ms: float
    errors: int
    loop_cpu_ms_per_request: float
    process_cpu_ms_per_request: float


def cpu_seconds(server: psutil.Process) -> tuple[float, float]:
    """User + system CPU seconds so far of the server's main thread (its event loop) and of the
    whole process."""
    loop = next(t for t in server.threads() if t.id == server.pid)
    times = server.cpu_times()
    return loop.user_time + loop.system_time, times.user + times.system


def measure(
    host: str,
    server: psutil.Process,
    path: str,
    bodies: Sequence[bytes],
    users: int,
    duration_s: float,
    warmup_s: float,
) -> tuple[EndpointStats, float, float]:
    """The load's figures, and the loop's and the process's CPU ms per request."""
    closed_loop_stats(host, path, bodies, users, warmup_s)
    loop0, all0 = cpu_seconds(server)
    stats = closed_loop_stats(host, path, bodies, users, duration_s)
    loop1, all1 = cpu_seconds(server)
    n = stats.requests
    return stats, 1000 * (loop1 - loop0) / n, 1000 * (all1 - all0) / n


def run(
    repository: Path,
    variants: Sequence[Variant],
    users: Sequence[int],
    duration_s: float,
    rounds: int,
    path: str,
    bodies: Sequence[bytes],
    warmup_s: float = WARMUP_S,
) -> list[Point]:
    points = []
    quiet = {"NLPSERVE_LOG_LEVEL": "warning"}  # no access log line per request
    for round_ in range(1, rounds + 1):
        for name, settings in variants:
            env = {**quiet, **dict(settings)}
            with running_server(nlpserve_command(repository), env=env) as (host, process):
                server = psutil.Process(process.pid)
                for count in users:
                    stats, loop_ms, all_ms = measure(
                        host, server, path, bodies, count, duration_s, warmup_s
                    )
                    point = Point(
                        round_, name, count, stats.requests, stats.rps, stats.p50_ms or 0.0,
                        stats.p95_ms or 0.0, stats.failures, loop_ms, all_ms,
                    )  # fmt: skip
                    print(json.dumps(asdict(point)), file=sys.stderr, flush=True)
                    points.append(point)
    return points


def request_bodies(protocol: str, model: str, texts: Sequence[str]) -> tuple[str, list[bytes]]:
    """The path and one body per text: the task API's or the Open Inference Protocol's."""
    if protocol == "v2":
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES"}
        return f"/v2/models/{model}/infer", [
            json.dumps({"inputs": [{**tensor, "data": [t]}]}).encode() for t in texts
        ]
    return "/v1/classify", [json.dumps({"texts": [t], "model": model}).encode() for t in texts]


def table(points: Sequence[Point]) -> str:
    """Per variant and user count: the medians over rounds."""
    lines = [
        "| variant | users | rounds | req/s | p50 ms | p95 ms | event loop CPU ms/req "
        "| process CPU ms/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((p.variant, p.users) for p in points)
    for variant, users in keys:
        group = [p for p in points if (p.variant, p.users) == (variant, users)]

        def median(field: str, group: list[Point] = group) -> float:
            return statistics.median(getattr(p, field) for p in group)

        lines.append(
            f"| {variant} | {users} | {len(group)} | {median('req_per_s'):.1f} "
            f"| {median('p50_ms'):.1f} | {median('p95_ms'):.1f} "
            f"| {median('loop_cpu_ms_per_request'):.3f} "
            f"| {median('process_cpu_ms_per_request'):.3f} | {sum(p.errors for p in group)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loop_cost", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds before a point")
    parser.add_argument(
        "--variant", type=parse_variant, action="append", default=[],
        help="NAME:SETTING=VALUE[,...] (as bench_serving's); default: the server's defaults",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=["v1", "v2"], default="v1",
        help="v1: POST /v1/classify; v2: the Open Inference Protocol's infer (JSON, text BYTES)",
    )  # fmt: skip
    parser.add_argument("--model", default="sentiment", help="the classifier (v2 names it)")
    parser.add_argument("--data-dir", help="../shared/data layout (default: found beside)")
    parser.add_argument("--out", type=Path, help="JSON: every point")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir) if args.data_dir else default_data_dir()
    texts = load_payloads(data_dir).texts
    path, bodies = request_bodies(args.protocol, args.model, texts)
    variants: list[Variant] = args.variant or [("defaults", ())]
    points = run(
        args.repository,
        variants,
        args.users,
        args.duration,
        args.rounds,
        path,
        bodies,
        args.warmup,
    )
    print(table(points))
    if args.out:
        args.out.write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
    return 0 if not any(p.errors for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
