"""Measuring one server of the serving benchmark: start it, label the probe texts, run the
load (Locust, or the raw closed loop) at every user count with server CPU, client CPU and
batching around each run; then, servers down, the engine-only rates and every run's label
agreement with (a)."""

from __future__ import annotations

import json
import logging
import resource
import urllib.request
from typing import Any

import psutil

from loadtests.bench_config import BenchConfig
from loadtests.bench_report import BenchResult, Point, ServerRun
from loadtests.bench_servers import ServerSpec
from loadtests.engine_only import engine_only_rates
from loadtests.peers import label_agreement, probe_labels
from loadtests.raw_http import closed_loop_stats
from loadtests.run import parse_duration, run_once
from loadtests.server_metrics import scrape_batch_counters
from loadtests.servers import running_server
from loadtests.stats import aggregated, read_stats
from service.engines.session import SessionSettings

logger = logging.getLogger(__name__)


def _cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: Locust runs
    return usage.ru_utime + usage.ru_stime


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the raw load runs in this process
    return usage.ru_utime + usage.ru_stime


def measure_point(
    spec: ServerSpec,
    server: psutil.Process,
    host: str,
    users: int,
    config: BenchConfig,
    texts: list[str],
) -> Point:
    """One load run against a running server, with CPU and batching deltas around it."""
    before = scrape_batch_counters(host, config.model) if spec.nlpserve else None
    window_s = parse_duration(config.run_time)
    if config.load == "raw":
        server_cpu, client_cpu = _cpu_seconds(server), _own_cpu_seconds()
        bodies = [json.dumps({"texts": [text], "model": config.model}).encode() for text in texts]
        stats = closed_loop_stats(host, "/v1/classify", bodies, users, window_s)
        client_cpu = (_own_cpu_seconds() - client_cpu) / window_s
        stats_path = ""
    else:
        extra = ["--classify-model", config.model, "--think-time", "0", "--items-per-request", "1"]
        if config.data_dir:
            extra += ["--data-dir", config.data_dir]
        server_cpu, client_cpu = _cpu_seconds(server), _children_cpu_seconds()
        # All users start within a second (spawn rate = users): the run is the steady state.
        stats_csv = run_once(
            host, users, users, config.run_time, config.work_dir / spec.key, ["ClassifyUser"],
            extra,
        )  # fmt: skip
        client_cpu = (_children_cpu_seconds() - client_cpu) / window_s
        stats, stats_path = aggregated(read_stats(stats_csv)), str(stats_csv)
    server_cpu = (_cpu_seconds(server) - server_cpu) / window_s
    batches = (scrape_batch_counters(host, config.model) - before) if before else None
    return Point(users, stats, server_cpu, client_cpu, batches, stats_path)


def run_server(
    spec: ServerSpec, config: BenchConfig, probe_texts: list[str], texts: list[str]
) -> ServerRun:
    """Start one server, label `probe_texts`, measure every user count against it (the raw
    load sends `texts`), stop it."""
    log_path = config.work_dir / "logs" / f"{spec.key}.log"
    logger.info("server %s", spec.label)
    with running_server(spec.command, spec.env, log_path, ready_path=spec.ready_path) as (
        host,
        process,
    ):
        server = psutil.Process(process.pid)
        batching = served_batching(host, config.model) if spec.nlpserve else None
        labels = probe_labels(host, config.model, probe_texts)
        points = []
        for users in config.users:
            logger.info("%s: %d users for %s", spec.label, users, config.run_time)
            points.append(measure_point(spec, server, host, users, config, texts))
    return ServerRun(
        spec.key,
        spec.label,
        spec.kind,
        spec.version,
        spec.precision,
        points,
        variant=spec.variant,
        batching=batching,
        labels=labels,
    )


def served_batching(host: str, model: str) -> dict[str, Any] | None:
    """The batching policy nlpserve applies to `model` (config.json plus overrides)."""
    with urllib.request.urlopen(host + "/v1/models", timeout=10) as response:
        models = json.loads(response.read())["models"]
    return next((m.get("batching") for m in models if m["name"] == model), None)


def add_engine_only(result: BenchResult, config: BenchConfig, texts: list[str]) -> None:
    """Engine-only rates at the batch sizes each (a) run formed, measured with servers down."""
    settings = SessionSettings(providers=config.providers, intra_op_threads=config.threads)
    model_dir = config.repository / config.model
    for run in result.runs:
        if run.kind != "batching" or run.version is None or run.variant:
            continue  # variants are compared with each other and (a), not with a ceiling
        sizes = sorted(
            {
                max(1, round(p.batches.mean_batch_size))
                for p in run.points
                if p.batches and p.batches.mean_batch_size
            }
        )
        if sizes:
            # A server whose batcher puts one-thread runs side by side: measure that way too.
            workers = int((run.batching or {}).get("workers", 1))
            rates = engine_only_rates(
                model_dir,
                run.version,
                texts,
                sizes,
                settings,
                config.engine_seconds,
                side_by_side=workers if config.threads > 1 else 1,
            )
            run.engine_only = {r.batch_size: r.sequences_per_s for r in rates}


def add_label_agreement(result: BenchResult) -> None:
    """Each run's agreement with the first (a) run's labels on the probe texts (the first run
    itself included: 1.0), so the report shows every server computed the same answers."""
    reference = next((r.labels for r in result.runs if r.kind == "batching" and r.labels), None)
    if reference is None:
        return
    for run in result.runs:
        if run.labels:
            run.label_agreement = label_agreement(reference, run.labels)
