"""Translation load benchmark: the step scheduler against request-level batching, in one run.

For each batching mode (`--modes`: step, the server's default; step-inline, the scheduler with
the joiners' encoder inside the step instead of beside it; request, request-level batching) it
starts nlpserve on the repository, and for each user count runs a closed loop for `--duration`
seconds: every user sends one sentence per request (`POST /v1/translate`, the sentences in turn
from `--sentences`, e.g. Multi30k val.en) and sends the next as soon as the answer came. With
the scheduler it then runs the same loop with `"stream": true`, timing the first piece and the
whole stream.

    python -m loadtests.translation_bench --repository runs/demo/model_repository \
        --sentences ../shared/data/multi30k/val.en --users 1 8 32 64 --duration 20

Per mode and user count: req/s, latency p50/p95/p99, generated tokens/s (answers re-tokenized
with the model's tokenizer.json, so both modes are counted alike), and from /metrics the mean
decoder rows per step (scheduler) or sequences per engine run (request-level); for streams the
time to the first piece. The JSON report goes to `--out`; a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from loadtests.raw_http import RawHttpPool
from loadtests.servers import nlpserve_command, running_server
from loadtests.translation_inprocess import compare, percentiles
from service.engines.translator import DecodingParams
from service.settings import available_cores

logger = logging.getLogger(__name__)

# The server's environment per mode: step scheduling (the default: one lane per core, each
# encoding its joiners, a busy lane in groups), the same with every joiner joining at the first
# boundary (no group), the same with streams encoded as they arrive, the same with each lane
# process pinned to a core, one lane with the encoder beside its steps, one lane encoding
# inside the step; then request-level batching: on --threads threads, with two engine runs in
# flight, with this service's defaults (the baseline users get when they select it: a thread
# per core, runs side by side under load, ORT spinning only during runs), and as issue 13 found
# it (one engine run at a time on two intra-op threads whatever --threads says, ORT's threads
# always spinning), the same never spinning (the baseline stops 28-38 measured) and spinning
# only during runs (today's spin policy). A mode that names no spin setting gets the service's.
ONE_LANE = {"NLPSERVE_TRANSLATION_BATCHING": "step", "NLPSERVE_DECODE_LANES": "1"}
REQUEST_LEVEL = {"NLPSERVE_TRANSLATION_BATCHING": "request"}
AS_FILED = {
    **REQUEST_LEVEL,
    "NLPSERVE_INTRA_OP_THREADS": "2",
    "NLPSERVE_SIDE_BY_SIDE_UNDER_LOAD": "false",
}
MODES = {
    "step": {"NLPSERVE_TRANSLATION_BATCHING": "step"},
    "step-streams-early": {
        "NLPSERVE_TRANSLATION_BATCHING": "step",
        "NLPSERVE_DECODE_ENCODE_STREAMS_EARLY": "true",
    },
    "step-join-at-once": {
        "NLPSERVE_TRANSLATION_BATCHING": "step",
        "NLPSERVE_DECODE_JOIN_GROUP": "1",
    },
    "step-threads": {
        "NLPSERVE_TRANSLATION_BATCHING": "step",
        "NLPSERVE_DECODE_LANE_PROCESSES": "false",
    },
    "step-processes": {
        "NLPSERVE_TRANSLATION_BATCHING": "step",
        "NLPSERVE_DECODE_LANE_PROCESSES": "true",
    },
    "step-pinned": {
        "NLPSERVE_TRANSLATION_BATCHING": "step",
        "NLPSERVE_DECODE_LANE_PINNING": "true",
    },
    "step-no-tail-lane": {
        "NLPSERVE_TRANSLATION_BATCHING": "step",
        "NLPSERVE_DECODE_TAIL_LANE": "false",
    },
    "step-one-lane": ONE_LANE,
    "step-inline": {**ONE_LANE, "NLPSERVE_DECODE_ENCODE_AHEAD": "0"},
    "request": REQUEST_LEVEL,
    "request-2w": {**REQUEST_LEVEL, "NLPSERVE_WORKERS_PER_MODEL": "2"},
    "request-defaults": {**REQUEST_LEVEL, "NLPSERVE_INTRA_OP_THREADS": str(available_cores())},
    "request-as-filed": {
        **AS_FILED,
        "NLPSERVE_ALLOW_SPINNING": "true",
        "NLPSERVE_SPIN_ONLY_DURING_RUNS": "false",
    },
    "request-as-filed-nospin": {**AS_FILED, "NLPSERVE_ALLOW_SPINNING": "false"},
    "request-as-filed-spin-runs": {
        **AS_FILED,
        "NLPSERVE_ALLOW_SPINNING": "true",
        "NLPSERVE_SPIN_ONLY_DURING_RUNS": "true",
    },
}


def server_env(mode: str, threads: int) -> dict[str, str]:
    """A benchmarked server's environment: --threads intra-op threads unless the mode says
    otherwise, and the mode's settings."""
    return {"NLPSERVE_INTRA_OP_THREADS": str(threads), **MODES[mode]}


def step_scheduled(mode: str) -> bool:
    return MODES[mode]["NLPSERVE_TRANSLATION_BATCHING"] == "step"


@dataclass(frozen=True)
class Workload:
    """What the users send: one sentence per request, except every `long_every`-th request of
    a user (0: none), which sends `long_join` consecutive sentences as one text (a paragraph
    among sentences: the case where request-level batching holds the short ones back)."""

    sentences: Sequence[str]
    long_every: int = 0
    long_join: int = 4

    def text(self, user: int, request: int, users: int) -> tuple[str, bool]:
        """The `request`-th text of `user`, and whether it is a long one."""
        first = user + request * users
        if self.long_every and request % self.long_every == self.long_every - 1:
            n = len(self.sentences)
            return " ".join(self.sentences[(first + k) % n] for k in range(self.long_join)), True
        return self.sentences[first % len(self.sentences)], False


def read_metrics(host: str) -> dict[str, float]:
    """Sums of every sample of the translator, by sample name."""
    out: dict[str, float] = {}
    text = httpx.get(host + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == "translator":
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def per_step(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return round(total / count, 2) if count else None


async def closed_loop(
    host: str,
    workload: Workload,
    users: int,
    duration_s: float,
    body: dict[str, Any],
    stream: bool,
) -> dict[str, Any]:
    """`users` clients sending one text per request (`workload`) for `duration_s` seconds."""
    latencies: list[float] = []
    kinds: list[bool] = []  # per latency: a long text
    first_pieces: list[float] = []
    translations: list[str] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + duration_s
    # Not httpx: its pool's CPU per request grows with the connections (see loadtests.raw_http)
    # and, at 32 users, made the load generator the bottleneck of the measurement.
    pool = RawHttpPool.for_url(host)

    async def user(index: int) -> None:
        sent = 0
        while time.monotonic() < stop_at:
            text, long = workload.text(index, sent, users)
            sent += 1
            payload = {**body, "texts": [text], "stream": stream}
            started = time.monotonic()
            first: list[float] = []

            def on_chunk(
                chunk: bytes, started: float = started, first: list[float] = first
            ) -> None:
                if not first and b"data: " in chunk:
                    first.append(time.monotonic() - started)

            try:
                status, _, answer = await pool.request(
                    "/v1/translate", json.dumps(payload).encode(), on_chunk
                )
            except (OSError, asyncio.IncompleteReadError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                continue
            if stream:
                for line in answer.decode().splitlines():
                    if line.startswith("data: ") and '"translation"' in line:
                        translations.append(json.loads(line[6:])["translation"])
                first_pieces.append(first[0] if first else float("nan"))
            else:
                translations.append(json.loads(answer)["translations"][0])
            latencies.append(time.monotonic() - started)
            kinds.append(long)

    started = time.monotonic()
    try:
        await asyncio.gather(*(user(u) for u in range(users)))
    finally:
        pool.close()
    elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "req_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": percentiles(latencies),
        "first_piece_ms": percentiles(first_pieces) if stream else None,
        **(
            {
                **latency_by_kind(latencies, kinds),
                "long_requests": sum(kinds),
            }
            if workload.long_every
            else {}
        ),
        "errors": errors,
        "translations": translations,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sentences = [s for s in Path(args.sentences).read_text().splitlines() if s.strip()]
    sentences = sentences[: args.limit]
    workload = Workload(sentences, args.long_every, args.long_join)
    if args.in_process:
        params = DecodingParams(args.beam_size, args.max_new_tokens)
        rows = asyncio.run(
            compare(
                args.repository,
                sentences,
                args.users,
                args.duration,
                params,
                args.threads,
                args.rates,
                args.modes,
            )
        )
        return {**describe(args, sentences), "in_process": True, "results": rows}
    tokenizer = Tokenizer.from_file(
        str(max((args.repository / "translator").glob("*/tokenizer.json")))
    )
    body: dict[str, Any] = {"beam_size": args.beam_size, "max_new_tokens": args.max_new_tokens}
    results: list[dict[str, Any]] = []
    for mode in args.modes:
        with running_server(
            nlpserve_command(args.repository),
            env=server_env(mode, args.threads),
            log_path=args.log_dir / f"server-{mode}.log" if args.log_dir else None,
        ) as (host, _):
            phases = [False, True] if step_scheduled(mode) and args.beam_size == 1 else [False]
            for stream in phases:
                for users in args.users:
                    before = read_metrics(host)
                    row = asyncio.run(
                        closed_loop(host, workload, users, args.duration, body, stream)
                    )
                    after = read_metrics(host)
                    texts = row.pop("translations")
                    generated = sum(len(tokenizer.encode(t).ids) for t in texts)
                    row.update(
                        mode=mode,
                        stream=stream,
                        users=users,
                        generated_tokens_per_s=round(generated / row["seconds"], 1),
                        mean_rows_per_step=per_step(
                            before, after, "nlpserve_decode_running_sequences"
                        ),
                        mean_sequences_per_run=per_step(before, after, "nlpserve_batch_size"),
                    )
                    logger.info("%s", row)
                    if step_scheduled(mode) and row["mean_rows_per_step"] is None:
                        raise SystemExit(
                            "translation_bench: the server did not decode step by step (a "
                            "decoder.onnx exported before step scheduling falls back to "
                            "request-level batching; see the server log): re-export the "
                            "translator"
                        )
                    results.append(row)
    return {**describe(args, sentences), "in_process": False, "results": results}


def describe(args: argparse.Namespace, sentences: Sequence[str]) -> dict[str, Any]:
    return {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {args.cpus} (stated by the caller)",
        "repository": str(args.repository),
        "sentences": f"{args.sentences} (first {len(sentences)})",
        "beam_size": args.beam_size,
        "max_new_tokens": args.max_new_tokens,
        "long_every": args.long_every,
        "long_join": args.long_join,
        "duration_s": args.duration,
        "intra_op_threads": args.threads,
    }


def markdown(report: dict[str, Any]) -> str:
    mixed = any("short_latency_ms" in r for r in report["results"])
    lines = [
        "| batching | stream | users | req/s | p50 ms | p95 ms | p99 ms | first piece p50 ms "
        "| gen tok/s | rows/step | seq/run | CPU ms/req | errors |"
        + (" short p50 / p95 ms | long p50 / p95 ms |" if mixed else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if mixed else ""),
    ]
    for r in report["results"]:
        first = r["first_piece_ms"]["p50"] if r["first_piece_ms"] else "-"
        first = "-" if first is None else first
        apart = "".join(
            f" {r[kind]['p50']} / {r[kind]['p95']} |"
            for kind in ("short_latency_ms", "long_latency_ms")
            if mixed
        )
        lines.append(
            f"| {r['mode']} | {'yes' if r['stream'] else 'no'} | {r['users']} | {r['req_per_s']} "
            f"| {r['latency_ms']['p50']} | {r['latency_ms']['p95']} | {r['latency_ms']['p99']} "
            f"| {first} | {r['generated_tokens_per_s']} | {r['mean_rows_per_step'] or '-'} "
            f"| {r['mean_sequences_per_run'] or '-'} | {r.get('cpu_ms_per_request', '-')} "
            f"| {r['errors'] or '-'} |{apart}"
        )
    return "\n".join(lines)


def latency_by_kind(latencies: Sequence[float], long: Sequence[bool]) -> dict[str, Any]:
    """Percentiles of the short and of the long texts' latencies (`long`: per latency)."""
    pairs = list(zip(latencies, long, strict=True))
    return {
        "short_latency_ms": percentiles([t for t, k in pairs if not k]),
        "long_latency_ms": percentiles([t for t, k in pairs if k]),
    }


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """What the users send and to which server: the options this benchmark shares with
    loadtests.translation_slices."""
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--sentences", type=Path, required=True, help="one source per line")
    parser.add_argument("--limit", type=int, default=200, help="sentences used (in turn)")
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy (and streams)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--out", type=Path, help="JSON report")
    parser.add_argument("--log-dir", type=Path, help="server logs")
    parser.add_argument(
        "--long-every",
        type=int,
        default=0,
        help="every Nth request of a user sends --long-join sentences as one text (0: none); "
        "latencies of short and long requests are reported apart",
    )
    parser.add_argument("--long-join", type=int, default=4, help="sentences in a long text")


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_arguments(parser)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per user count")
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=["step", "request-defaults"]
    )
    parser.add_argument("--cpus", default="unspecified CPU", help="machine, for the report")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[],
        help="--in-process: open-loop runs at these requests/s (Poisson arrivals) as well",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="no HTTP: users submit straight to the scheduler / batcher (engine-side effect)",
    )
    args = parser.parse_args(argv)
    if args.in_process and (args.long_every or "request-as-filed" in args.modes):
        parser.error("--in-process sends one sentence per request and runs --threads threads")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    report = run(args)
    write_report(args.out, report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
