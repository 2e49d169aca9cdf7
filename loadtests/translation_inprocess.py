"""The translation benchmark's closed loop without HTTP: users submit straight to the model's
step scheduler or to its request-level batcher, as `service.inference` does, in one process.

It separates what scheduling does for the engine from the cost of HTTP and of the load
generator, which on a small shared CPU dominate an HTTP run (reports/translation-benchmark.md).
Besides req/s it reports the process's CPU time per request, which other jobs sharing the cores
disturb less than wall-clock throughput. Time to the first token is when the scheduler hands the
first decoded token over (a stream detokenises it into a piece right after); the scheduler's
rows are measured twice, without a token listener (as a JSON answer) and with one (a stream).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service.batch_policy import BatchPolicy
from service.batcher import Batcher, RunStats
from service.decode_items import StepStats
from service.decode_lanes import DecodeLanes, scheduler_for
from service.decode_policy import DecodePolicy
from service.decode_scheduler import DecodeScheduler
from service.engines import ModelWorker, SessionSettings, TranslatorEngine
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams
from service.repository import scan
from service.settings import available_cores
from service.translator_scheduling import lane_maker


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


class Counts:
    """Observer of both the scheduler (steps) and the batcher (runs)."""

    def __init__(self) -> None:
        self.rows = self.steps = self.sequences = self.runs = 0

    def on_step(self, stats: StepStats) -> None:
        self.rows += stats.rows
        self.steps += 1

    def on_run(self, stats: RunStats) -> None:
        self.sequences += stats.size
        self.runs += 1

    def on_dropped(self, reason: str, count: int) -> None:
        pass


Submit = Callable[[Encoded, Callable[[int], None] | None], Awaitable[Any]]


class Recorder:
    """Submits one source at a time and records its latency, its time to the first token and its
    tokens; `result()` adds the wall-clock and process CPU time since the recorder was made."""

    def __init__(
        self, submit: Submit, count_tokens: Callable[[str], int], stream: bool = False
    ) -> None:
        self.submit, self.count_tokens = submit, count_tokens
        # Watching tokens costs the scheduler one event-loop wake-up per step (measured: 1.5 ms
        # CPU per request at 1 user), so only "stream" rows pay it, as over HTTP.
        self.stream = stream
        self.latencies: list[float] = []
        self.first: list[float] = []
        self.tokens = 0
        self.started, self.cpu = time.monotonic(), time.process_time()

    async def one(self, source: Encoded) -> None:
        started = time.monotonic()
        seen: list[float] = []

        def on_token(_: int) -> None:
            if not seen:
                seen.append(time.monotonic())

        text = await self.submit(source, on_token if self.stream else None)
        self.latencies.append(time.monotonic() - started)
        if seen:
            self.first.append(seen[0] - started)
        self.tokens += self.count_tokens(text)

    def result(self) -> dict[str, Any]:
        return {
            "elapsed": time.monotonic() - self.started,
            "cpu_s": time.process_time() - self.cpu,  # every thread of this process
            "latencies": self.latencies,
            "first": self.first,
            "tokens": self.tokens,
        }


async def closed_loop(
    submit: Submit,
    sources: Sequence[Encoded],
    users: int,
    duration_s: float,
    count_tokens: Callable[[str], int],
    stream: bool = False,
) -> dict[str, Any]:
    stop_at = time.monotonic() + duration_s

    async def user(index: int) -> None:
        i = index
        while time.monotonic() < stop_at:
            await record.one(sources[i % len(sources)])
            i += users

    record = Recorder(submit, count_tokens, stream)
    await asyncio.gather(*(user(u) for u in range(users)))
    return record.result()


async def open_loop(
    submit: Submit,
    sources: Sequence[Encoded],
    rate: float,
    duration_s: float,
    count_tokens: Callable[[str], int],
    stream: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Requests arriving at `rate` per second (Poisson, seeded) for `duration_s`, whatever the
    answers: the latency a sentence sees at a load the engine can carry."""
    rng = random.Random(seed)
    record = Recorder(submit, count_tokens, stream)
    tasks, i, at = [], 0, record.started
    while at < record.started + duration_s:
        at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        tasks.append(asyncio.ensure_future(record.one(sources[i % len(sources)])))
        i += 1
    await asyncio.gather(*tasks)
    return record.result()


async def compare(
    repository: Path,
    sentences: Sequence[str],
    users: Sequence[int],
    duration_s: float,
    params: DecodingParams,
    threads: int,
    rates: Sequence[float] = (),
    modes: Sequence[str] = ("step", "request"),
) -> list[dict[str, Any]]:
    """Rows of the benchmark table for each mode (see translation_bench.row and MODES)."""
    versions, _ = scan(repository, {})
    version = next(v for v in versions if v.name == "translator")
    settings = SessionSettings(providers="cpu", intra_op_threads=threads, allow_spinning=False)
    engine = TranslatorEngine(version, settings, single_thread_runs=True)
    sources = engine.encoder.encode(list(sentences))

    def count_tokens(text: str) -> int:  # re-tokenized, as the HTTP run counts
        return engine.encoder.encode([text])[0].tokens

    if "step-processes" in modes:
        raise ValueError("step-processes runs the lanes in processes of a server: over HTTP only")
    results = []
    for mode in modes:
        counts = Counts()
        scheduler: DecodeScheduler | DecodeLanes | None = None
        batcher: Batcher[Any, Any] | None = None
        # request-2w: two one-thread engine runs in flight, as the server with two workers
        runs_in_flight = 2 if mode == "request-2w" else 1
        worker = ModelWorker("translator", runs_in_flight)
        if not mode.startswith("request"):
            lanes = 1 if mode in ("step-one-lane", "step-inline") else available_cores()
            ahead = mode != "step-inline" and lanes == 1  # as translator_scheduling.encodes_ahead
            lane = lane_maker("translator", engine, side_by_side=lanes > 1, encode_ahead=ahead)
            group = 1 if mode == "step-join-at-once" else DecodePolicy().join_group
            scheduler = scheduler_for(lanes, lane, DecodePolicy(join_group=group), counts)
            scheduler.start()
            submit = _scheduler_submit(scheduler, params)
        else:
            policy = replace(BatchPolicy(), max_concurrent_runs=runs_in_flight)
            batcher = Batcher("translator", _run_batch(worker, engine), policy, observer=counts)
            batcher.start()
            submit = _batcher_submit(batcher, params)
        loads = [("users", n) for n in users] + [("rate", r) for r in rates]
        streams = (False,) if mode.startswith("request") else (False, True)  # the scheduler streams
        for stream, (kind, n) in ((st, load) for st in streams for load in loads):
            before = (counts.rows, counts.steps, counts.sequences, counts.runs)
            if kind == "users":
                run = await closed_loop(submit, sources, int(n), duration_s, count_tokens, stream)
            else:
                run = await open_loop(submit, sources, float(n), duration_s, count_tokens, stream)
            rows, steps = counts.rows - before[0], counts.steps - before[1]
            seqs, runs = counts.sequences - before[2], counts.runs - before[3]
            results.append(
                {
                    "mode": mode,
                    "in_process": True,
                    "stream": stream,
                    "users": n if kind == "users" else f"{n:g}/s open",
                    "requests": len(run["latencies"]),
                    "seconds": round(run["elapsed"], 2),
                    "req_per_s": round(len(run["latencies"]) / run["elapsed"], 2),
                    "latency_ms": percentiles(run["latencies"]),
                    "first_piece_ms": percentiles(run["first"]) if stream else None,
                    "errors": {},
                    "generated_tokens_per_s": round(run["tokens"] / run["elapsed"], 1),
                    # CPU time per request: less sensitive than req/s to other jobs on the cores
                    "cpu_ms_per_request": round(
                        run["cpu_s"] * 1000 / max(1, len(run["latencies"])), 2
                    ),
                    "mean_rows_per_step": round(rows / steps, 2) if steps else None,
                    "mean_sequences_per_run": round(seqs / runs, 2) if runs else None,
                }
            )
        if scheduler is not None:
            await scheduler.stop(30)
        if batcher is not None:
            await batcher.stop(30)
        worker.shutdown()
    return results


def _scheduler_submit(scheduler: DecodeScheduler | DecodeLanes, params: DecodingParams) -> Submit:
    async def submit(source: Encoded, on_token: Callable[[int], None] | None) -> Any:
        (item,) = scheduler.submit([source], key=params, timeout_s=600, on_token=on_token)
        return await item.future

    return submit


def _batcher_submit(batcher: Batcher[Any, Any], params: DecodingParams) -> Submit:
    async def submit(source: Encoded, on_token: Callable[[int], None] | None) -> Any:
        (item,) = batcher.submit([source], [source.tokens], key=params, timeout_s=600)
        return await item.future

    return submit


def _run_batch(
    worker: ModelWorker, engine: TranslatorEngine
) -> Callable[[list[Any], Hashable], Awaitable[list[str]]]:
    async def run_batch(payloads: list[Any], key: Hashable) -> list[str]:
        assert isinstance(key, DecodingParams)
        return await worker.call(engine.run, payloads, key)

    return run_batch
