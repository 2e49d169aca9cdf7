"""Translation throughput of two batching modes in alternating slices of one run.

loadtests.translation_bench runs one mode after the other, each for `--duration` seconds. On a
shared VM the machine's speed drifts by a third within minutes (reports/translation-
benchmark.md, stop 36: a single run's step/request ratio moved from 1.30x to 2.81x), so a ratio
of two back-to-back runs measures the drift as much as the modes. Here both servers stay up for
the whole run and the users alternate between them in short slices (A B, B A, A B, ...): each
slice's neighbour saw nearly the same machine, and a pair's ratio (the two slices of one round)
is the figure to read, its median and spread over many rounds the result.

    python -m loadtests.translation_slices --repository runs/translator/model_repository \
        --sentences ../shared/data/multi30k/val.en --users 32 --slice 5 --rounds 20

A slice is a closed loop: `--users` users, each sending one sentence per request (`POST
/v1/translate`) and the next as soon as the answer came, for `--warmup` + `--slice` seconds;
only answers that arrive in the last `--slice` seconds count (the first fill the server's
running set). The idle server costs nothing meanwhile: its lanes block on their pipes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtests.raw_http import RawHttpPool
from loadtests.servers import nlpserve_command, running_server
from loadtests.translation_bench import (
    MODES,
    Workload,
    add_workload_arguments,
    latency_by_kind,
    server_env,
    write_report,
)
from loadtests.translation_inprocess import percentiles

logger = logging.getLogger(__name__)


async def slice_loop(
    host: str, workload: Workload, users: int, warmup_s: float, slice_s: float, body: bytes
) -> dict[str, Any]:
    """One slice: the requests answered (200) in the window after the warm-up, their latencies,
    and every other status or connection error."""
    pool = RawHttpPool.for_url(host)
    started = time.perf_counter()
    window = (started + warmup_s, started + warmup_s + slice_s)
    latencies: list[float] = []
    long: list[bool] = []  # per latency: a long text (Workload.long_every)
    errors: Counter[str] = Counter()
    prefix, suffix = body[:-1] + b', "texts": [', b"]}"

    async def user(index: int) -> None:
        sent = 0
        while (sent_at := time.perf_counter()) < window[1]:
            text, is_long = workload.text(index, sent, users)
            sent += 1
            try:
                status, _, _ = await pool.request(
                    "/v1/translate", prefix + json.dumps(text).encode() + suffix
                )
            except (OSError, asyncio.IncompleteReadError) as e:
                errors[type(e).__name__] += 1
                continue
            answered = time.perf_counter()
            if status != 200:
                errors[str(status)] += 1
            elif window[0] <= answered < window[1]:
                latencies.append(answered - sent_at)
                long.append(is_long)

    try:
        await asyncio.gather(*(user(u) for u in range(users)))
    finally:
        pool.close()
    return {"latencies": latencies, "long": long, "errors": errors}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sentences = [s for s in Path(args.sentences).read_text().splitlines() if s.strip()]
    workload = Workload(sentences[: args.limit], args.long_every, args.long_join)
    body = json.dumps({"beam_size": args.beam_size, "max_new_tokens": args.max_new_tokens}).encode()
    first, second = args.modes
    slices: dict[str, list[dict[str, Any]]] = {first: [], second: []}
    with ExitStack() as servers:
        hosts = {
            mode: servers.enter_context(
                running_server(
                    nlpserve_command(args.repository),
                    env=server_env(mode, args.threads),
                    log_path=args.log_dir / f"server-{mode}.log" if args.log_dir else None,
                )
            )[0]
            for mode in args.modes
        }
        for round_ in range(args.rounds):
            # Alternate which mode goes first, so neither always follows the other's tail.
            for mode in (first, second) if round_ % 2 == 0 else (second, first):
                result = asyncio.run(
                    slice_loop(hosts[mode], workload, args.users, args.warmup, args.slice, body)
                )
                result["req_per_s"] = round(len(result["latencies"]) / args.slice, 2)
                logger.info("round %d %s: %s req/s", round_, mode, result["req_per_s"])
                slices[mode].append(result)
    return summary(args, first, second, slices)


def summary(
    args: argparse.Namespace, first: str, second: str, slices: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Per mode the pooled req/s and latency percentiles; per round the first mode's req/s over
    the second's, and their median, quartiles and range."""
    ratios = [
        round(a["req_per_s"] / b["req_per_s"], 3) if b["req_per_s"] else None
        for a, b in zip(slices[first], slices[second], strict=True)
    ]
    known = sorted(r for r in ratios if r is not None)
    quartiles = statistics.quantiles(known, n=4) if len(known) > 1 else known * 3
    modes = {}
    for mode, results in slices.items():
        latencies = [t for r in results for t in r["latencies"]]
        kinds = [k for r in results for k in r["long"]]
        errors = sum((r["errors"] for r in results), Counter[str]())
        modes[mode] = {
            "req_per_s": round(len(latencies) / (args.slice * len(results)), 2),
            "latency_ms": percentiles(latencies),
            **latency_by_kind(latencies, kinds),
            "slices_req_per_s": [r["req_per_s"] for r in results],
            "errors": dict(errors),
        }
    return {
        "command": " ".join(sys.argv),
        "repository": str(args.repository),
        "users": args.users,
        "slice_s": args.slice,
        "warmup_s": args.warmup,
        "long_every": args.long_every,
        "long_join": args.long_join,
        "rounds": args.rounds,
        "modes": modes,
        "ratio": f"{first} / {second}",
        "round_ratios": ratios,
        "median_ratio": round(statistics.median(known), 3) if known else None,
        "quartile_ratios": [round(q, 3) for q in quartiles] if known else None,
        "pooled_ratio": round(modes[first]["req_per_s"] / modes[second]["req_per_s"], 3)
        if modes[second]["req_per_s"]
        else None,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| mode | req/s (pooled) | slices' req/s | p50 ms | p95 ms | p99 ms | errors "
        "| short p50 / p95 ms | long p50 / p95 ms |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for mode, m in report["modes"].items():
        lat, short, long = m["latency_ms"], m["short_latency_ms"], m["long_latency_ms"]
        lines.append(
            f"| {mode} | {m['req_per_s']} | {min(m['slices_req_per_s'])}-"
            f"{max(m['slices_req_per_s'])} | {lat['p50']} | {lat['p95']} | {lat['p99']} "
            f"| {m['errors'] or '-'} | {short['p50']} / {short['p95']} "
            f"| {long['p50']} / {long['p95']} |"
        )
    ratios = [r for r in report["round_ratios"] if r is not None]
    lines.append(
        f"\n{report['ratio']} per round ({report['rounds']} rounds of {report['slice_s']} s "
        f"slices, {report['users']} users): median {report['median_ratio']}x, quartiles "
        f"{report['quartile_ratios']}, range {min(ratios, default=None)}-"
        f"{max(ratios, default=None)}; pooled {report['pooled_ratio']}x"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_arguments(parser)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument(
        "--modes", nargs=2, choices=list(MODES), default=["step", "request-defaults"]
    )
    parser.add_argument("--slice", type=float, default=5.0, help="measured seconds per slice")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=20, help="slices per mode")
    args = parser.parse_args(argv)
    if args.modes[0] == args.modes[1]:
        parser.error("--modes takes two different modes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(args)
    write_report(args.out, report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
