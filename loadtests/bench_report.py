"""Results of the serving benchmark and their report: markdown tables, goals, the PNG plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from loadtests.plot import plot_load_curves
from loadtests.server_metrics import BatchCounters
from loadtests.stats import EndpointStats
from service.repository import ModelVersion

GOAL_USERS = 32  # the issue states its goals at 32 concurrent users
# Served throughput as a share of the engine-only rate at the batch size formed (issue 12: 90%).
SERVED_SHARE_GOAL = 0.9

LOAD_NAMES = {
    "locust": "Locust ClassifyUser",
    "raw": "loadtests.raw_http's closed loop (the texts ClassifyUser sends)",
}


@dataclass
class Point:
    users: int
    stats: EndpointStats  # Locust's aggregate row
    server_cpu_cores: float  # server process CPU seconds / load window
    client_cpu_cores: float  # the load generator's CPU seconds / load window (same machine)
    batches: BatchCounters | None  # nlpserve only: what the batcher formed
    stats_csv: str

    @property
    def errors(self) -> int:
        return self.stats.failures


@dataclass
class ServerRun:
    key: str
    label: str
    kind: str  # "batching" | "unbatched" | "baseline" | "peer"
    version: int | None
    precision: str
    points: list[Point]
    engine_only: dict[int, float] = field(default_factory=dict)  # batch size -> sequences/s
    variant: str = ""  # bench_serving --variant name ('' = the model's own batching config)
    batching: dict[str, Any] | None = None  # nlpserve's effective policy, from /v1/models
    labels: list[str] = field(default_factory=list)  # its labels for the probe texts
    label_agreement: float | None = None  # with the first (a) run's labels

    @property
    def nlpserve(self) -> bool:
        return self.kind in ("batching", "unbatched")

    def at(self, users: int) -> Point | None:
        return next((p for p in self.points if p.users == users), None)

    def engine_ceiling(self, point: Point) -> float | None:
        """Engine-only sequences/s at the batch size this point formed."""
        if not point.batches or not point.batches.mean_batch_size:
            return None
        return self.engine_only.get(max(1, round(point.batches.mean_batch_size)))


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class BenchResult:
    config: dict[str, Any]
    command: str
    machine: dict[str, Any]
    versions: list[dict[str, Any]]  # the (a) versions: number, precision, source checkpoint
    checkpoint: str  # the baseline's
    checkpoint_best: dict[str, Any]  # its config.json "best": the dev accuracy it reached
    runs: list[ServerRun] = field(default_factory=list)
    duration_s: float = 0.0
    export_benchmark: dict[str, Any] | None = None  # {"path", "command", "checkpoint", "cells"}

    def add_export_benchmark(self, path: Path) -> None:
        """Keep the ONNX Runtime classifier cells of `python -m export bench`'s JSON."""
        data = json.loads(path.read_text(encoding="utf-8"))
        classifier = data.get("classifier") or {}
        cells = [c for c in classifier.get("cells", []) if c.get("engine", "").startswith("ort")]
        if cells:
            self.export_benchmark = {
                "path": str(path),
                "command": data.get("command"),
                "checkpoint": classifier.get("checkpoint"),
                "cells": cells,
            }

    @classmethod
    def describe(
        cls,
        config: dict[str, Any],
        command: str,
        versions: list[ModelVersion],
        checkpoint: Path,
    ) -> BenchResult:
        machine = {
            "cpu": _cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "niceness": os.nice(0),  # servers and Locust inherit it
            "python": platform.python_version(),
            "onnxruntime": _package_version("onnxruntime"),
            "torch": _package_version("torch"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        described = [
            {
                "version": v.version,
                "precision": v.manifest.precision,
                "source_checkpoint": v.manifest.source_checkpoint,
                "optimizations": bool(v.manifest.optimizations),
            }
            for v in versions
        ]
        best = json.loads((checkpoint / "config.json").read_text(encoding="utf-8")).get("best")
        return cls(config, command, machine, described, str(checkpoint), best or {})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for run, run_data in zip(self.runs, data["runs"], strict=True):
            for point, point_data in zip(run.points, run_data["points"], strict=True):
                if point.batches:
                    point_data["mean_batch_size"] = point.batches.mean_batch_size
                    point_data["engine_ceiling_seq_per_s"] = run.engine_ceiling(point)
        return data


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _table(run: ServerRun) -> list[str]:
    nlpserve = run.nlpserve
    head = (
        "| users | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU | req/s per server core "
        "| Locust CPU |"
    )
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if nlpserve:
        head += " mean batch | engine busy | engine-only seq/s | served / engine-only |"
        rule += "---:|---:|---:|---:|"
    lines = [f"### {run.label}" + (f" (version {run.version})" if run.version else ""), ""]
    if run.batching:
        policy = ", ".join(  # numbers, and words such as the translator's scheduling
            f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}"
            for k, v in run.batching.items()
        )
        lines += [f"Batching policy served (from /v1/models): {policy}.", ""]
    if run.label_agreement is not None:
        lines += [
            f"Labels agree with (a) on {run.label_agreement:.1%} of {len(run.labels)} texts.",
            "",
        ]
    lines += [head, rule]
    window_s = None
    for p in run.points:
        s = p.stats
        per_core = f"{s.rps / p.server_cpu_cores:.1f}" if p.server_cpu_cores > 0 else "n/a"
        row = (
            f"| {p.users} | {s.rps:.1f} | {_ms(s.p50_ms)} | {_ms(s.p95_ms)} | {_ms(s.p99_ms)} "
            f"| {p.errors} | {p.server_cpu_cores:.2f} | {per_core} | {p.client_cpu_cores:.2f} |"
        )
        if nlpserve:
            b = p.batches
            ceiling = run.engine_ceiling(p)
            window_s = s.requests / s.rps if s.rps else None
            busy = b.engine_seconds / window_s if b and window_s else None
            row += (f" {b.mean_batch_size:.1f} |" if b and b.mean_batch_size else " n/a |") + (
                f" {busy:.0%} |" if busy is not None else " n/a |"
            )
            row += f" {ceiling:.0f} |" if ceiling else " n/a |"
            row += f" {s.rps / ceiling:.0%} |" if ceiling else " n/a |"
        lines.append(row)
    return [*lines, ""]


def _export_benchmark_table(export: dict[str, Any] | None) -> list[str]:
    """The export benchmark's ORT sequences/s by engine and batch (columns: sequence length)."""
    if not export:
        return []
    cells = export["cells"]
    seq_lens = sorted({c["seq_len"] for c in cells})
    lines = [
        "### Engine-only ceiling from the export benchmark",
        "",
        f"From `{export['path']}` (`{export['command']}`; checkpoint `{export['checkpoint']}`): "
        "ONNX Runtime alone on synthetic fixed-length batches, sequences/s.",
        "",
        "| engine | batch | " + " | ".join(f"T={t}" for t in seq_lens) + " |",
        "|---|---:|" + "---:|" * len(seq_lens),
    ]
    for engine, batch in sorted({(c["engine"], c["batch"]) for c in cells}):
        rates = {
            c["seq_len"]: c["seq_per_s"]
            for c in cells
            if (c["engine"], c["batch"]) == (engine, batch)
        }
        values = " | ".join(f"{rates[t]:.0f}" if t in rates else "n/a" for t in seq_lens)
        lines.append(f"| {engine} | {batch} | {values} |")
    return [*lines, ""]


def goals(result: BenchResult) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) at GOAL_USERS users; met None when a run is missing."""
    by_kind: dict[str, list[ServerRun]] = {}
    for run in result.runs:
        by_kind.setdefault(run.kind, []).append(run)
    rows: list[tuple[str, str, bool | None]] = []
    baseline = by_kind.get("baseline", [None])[0]
    unbatched = by_kind.get("unbatched", [None])[0]
    for a in by_kind.get("batching", []):
        pa = a.at(GOAL_USERS)
        name = f"(a) {a.precision}" + (f" [{a.variant}]" if a.variant else "")
        pc = baseline.at(GOAL_USERS) if baseline else None
        if pa and pc and pc.stats.rps:
            ratio = pa.stats.rps / pc.stats.rps
            p95_lower = (pa.stats.p95_ms or 0) < (pc.stats.p95_ms or 0)
            rows.append(
                (
                    f"{name} >= 4x (c) throughput at {GOAL_USERS} users, lower p95",
                    f"{ratio:.2f}x; p95 {_ms(pa.stats.p95_ms)} vs {_ms(pc.stats.p95_ms)} ms",
                    ratio >= 4 and p95_lower,
                )
            )
        ceiling = a.engine_ceiling(pa) if pa else None
        if pa and ceiling:
            share = pa.stats.rps / ceiling
            size = pa.batches.mean_batch_size if pa.batches else 0
            rows.append(
                (
                    f"{name} >= {SERVED_SHARE_GOAL:.0%} of engine-only at its batch size "
                    f"({GOAL_USERS} users)",
                    f"{share:.0%} ({pa.stats.rps:.1f} of {ceiling:.1f} seq/s at batch {size:.1f})",
                    share >= SERVED_SHARE_GOAL,
                )
            )
        pb = unbatched.at(GOAL_USERS) if unbatched else None
        if pa and pb and pb.stats.rps and unbatched and unbatched.precision == a.precision:
            ratio = pa.stats.rps / pb.stats.rps
            rows.append(
                (
                    f"{name} >= 1.3x (b) throughput at {GOAL_USERS} users",
                    f"{ratio:.2f}x",
                    ratio >= 1.3,
                )
            )
    return rows


def _contention_warning(machine: dict[str, Any]) -> list[str]:
    """A caution line when other work had the machine oversubscribed at the start."""
    load, cores = machine["load_average_at_start"][0], machine["cores"]
    if load <= cores:
        return []
    return [
        f"- Caution: the machine was oversubscribed (1-minute load average {load} on {cores} "
        "cores) by other work. Each server got the share of CPU the scheduler gave it (server "
        "CPU column), and the engine-only rates were measured at another moment: compare "
        "req/s per server core, and rerun on an idle machine for absolute numbers."
    ]


def write_report(
    result: BenchResult,
    report: Path,
    extra_goals: Sequence[tuple[str, str, bool | None]] = (),
    extra_section: Sequence[str] = (),
) -> Path:
    """report (markdown) and report.png (throughput and latency vs users, every server);
    `extra_goals` join the goals table and `extra_section` (lines) follows it."""
    png = report.with_suffix(".png")
    series = {run.label: [(p.users, p.stats) for p in run.points] for run in result.runs}
    plot_load_curves(series, png, title="serving benchmark: sentiment model, 1 text/request")
    m, c = result.machine, result.config
    versions = "; ".join(
        f"version {v['version']} ({v['precision']}{', optimised' if v['optimizations'] else ''})"
        for v in result.versions
    )
    sources = {v["source_checkpoint"] for v in result.versions}
    lines = [
        "# Serving benchmark: nlpserve vs. serving frameworks and the FastAPI + PyTorch app",
        "",
        f"Command: `{result.command}` ({result.duration_s / 60:.1f} min)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, load average at start "
        f"{m['load_average_at_start']} (a shared machine: compare ratios within this run), "
        f"benchmark processes at niceness {m['niceness']}; "
        f"Python {m['python']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}; {m['date']}.",
        f"- Model: `{c['model']}` from `{c['repository']}`: {versions}; exported from "
        f"{', '.join(f'`{s}`' for s in sorted(map(str, sources)))}. Baseline checkpoint: "
        f"`{result.checkpoint}` (best: {result.checkpoint_best or 'not recorded'}).",
        f"- nlpserve: providers={c['providers']}, {c['threads']} intra-op threads, batching from "
        f"the model's config.json; (b) sets NLPSERVE_MAX_BATCH_SIZE=1.",
        f"- Load: {LOAD_NAMES[c['load']]}, closed loop (no think time), one text "
        f"per request, {c['run_time']} per point, all users started within the first second. "
        f"The load generator runs on the same cores as the server (its CPU is in the tables, "
        f"column 'Locust CPU' whichever it is).",
        *_contention_warning(m),
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for goal, measured, met in [*goals(result), *extra_goals]:
        lines.append(
            f"| {goal} | {measured} | {'yes' if met else 'NO' if met is False else 'n/a'} |"
        )
    lines += ["", *extra_section]
    lines += ["## Results", "", f"![throughput and latency vs users]({png.name})", ""]
    for run in result.runs:
        lines += _table(run)
    lines += _export_benchmark_table(result.export_benchmark)
    lines += [
        "Columns: server CPU = server process CPU seconds / load window (2.00 = both cores); "
        "req/s per server core = req/s / server CPU, comparable when other work on the machine "
        "takes a varying share of the cores; "
        "mean batch = sequences / engine runs from nlpserve's /metrics; engine busy = engine "
        "run time / load window, summed over the runs in flight (up to 200% with two one-thread "
        "runs side by side); engine-only = `loadtests.engine_only`, the server's own "
        "classifier engine fed batches of that size with no HTTP (the better of one run on "
        "every thread and the server's one-thread runs side by side), measured after the "
        "servers stopped.",
        "",
    ]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    return report
