"""What one serving benchmark run compares and how long: `python -m loadtests.bench_serving`'s
options as one frozen config (the servers and the measurements read it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loadtests.peers import PEERS

# (variant name, ((NLPSERVE_ variable, value), ...)): one more (a) server with those settings.
Variant = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class BenchConfig:
    repository: Path  # model repository holding the model (what `python -m export` writes)
    model: str = "sentiment"
    checkpoint: Path | None = None  # baseline's checkpoint; None: the manifest's source
    users: tuple[int, ...] = (1, 8, 32, 64)  # the load points
    run_time: str = "20s"  # per point; ~20 s gives p99 from >1000 requests at 32+ users
    # locust: Locust's ClassifyUser (the load; ~1.5 ms of client CPU per request, on the
    # server's cores); raw: loadtests.raw_http's closed loop, same texts and JSON, tens of
    # microseconds per request, for what the servers do with the cores to themselves
    load: Literal["locust", "raw"] = "locust"
    providers: Literal["cpu", "cuda"] = (
        "cpu"  # NLPSERVE_PROVIDERS; "cuda" also puts the baseline on the GPU
    )
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))  # ORT intra-op
    data_dir: str = ""  # payloads: '' = ../shared/data when present, 'bundled', or a path
    versions: tuple[int, ...] = ()  # (a) versions; () = served (+ newest fp32 if that is not)
    servers: tuple[str, ...] = ("batching", "unbatched", "baseline", *PEERS)
    peer_venvs: Path | None = None  # venvs of the peers (`make peers`); None: no peers
    label_probe_texts: int = 64  # texts every server labels before its load (agreement check)
    variants: tuple[Variant, ...] = ()  # extra (a) servers on the served version
    engine_seconds: float = 3.0  # engine-only measurement per batch size
    # `python -m export bench`'s JSON: its ORT cells are quoted as the offline ceiling.
    engine_json: Path = Path("reports/engine-benchmark.json")
    work_dir: Path = Path("runs/bench-serving")
    # None: WORK_DIR/report.md (the Makefile's `bench` names reports/serving-benchmark.md, so an
    # exploratory run does not overwrite the published report)
    report: Path | None = None


class BenchError(RuntimeError):
    """Bad input (repository, checkpoint): the CLI prints it and exits 2."""
