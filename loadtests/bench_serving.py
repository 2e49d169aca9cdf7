"""Serving benchmark: the same Locust load against nlpserve and against the app users write today.

    python -m loadtests.bench_serving --repository runs/demo/model_repository \\
        [--checkpoint runs/demo/sentiment] [--users 1 8 32 64] [--run-time 20s] \\
        [--report reports/serving-benchmark.md]

Servers, one at a time on 127.0.0.1, each serving only the sentiment model:
  (a) nlpserve with dynamic batching (the model's config.json batching); for each precision
      benchmarked (the served version; plus the newest fp32 one when the served one is not fp32);
  (b) nlpserve with max_batch_size=1 (NLPSERVE_MAX_BATCH_SIZE=1), the served version;
  (c) loadtests/baselines/app.py: FastAPI + PyTorch, one forward pass per request, on the
      checkpoint the served version was exported from;
  (d) BentoML with adaptive batching and (e) Ray Serve with @serve.batch, each in its venv under
      --peer-venvs (`make peers`), running nlpserve's engine on the served version
      (loadtests/peers.py; skipped without --peer-venvs);
  and, for each `--variant NAME:SETTING=VALUE[,SETTING=VALUE...]`, one more (a) server on the
  served version with those NLPSERVE_* settings (e.g. `--variant w2t1:workers_per_model=2,
  intra_op_threads=1`): batching policies compared under the same load in the same run.
Each gets closed-loop ClassifyUser load (one text per request, no think time) at every user
count. Recorded per point: throughput, p50/p95/p99, errors, server CPU (psutil), Locust's own
CPU, and for nlpserve the batches it formed (from /metrics). Before the load, each server labels
the same texts; the report gives every server's agreement with (a). Then, with the servers
stopped, the
engine-only rate at those batch sizes (loadtests.engine_only). Writes the report (markdown +
PNG) and results.json under --work-dir. Run time: about (servers x users x (run time + 3 s)).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from loadtests.bench_peers import peer_goals, peer_table
from loadtests.bench_report import BenchResult, Point, ServerRun, write_report
from loadtests.engine_only import engine_only_rates
from loadtests.payloads import load_payloads, resolve_data_dir
from loadtests.peers import PEERS, label_agreement, peer_command, peer_env, probe_labels
from loadtests.run import HelpFormatter, parse_duration, run_once
from loadtests.server_metrics import scrape_batch_counters
from loadtests.servers import nlpserve_command, running_server
from loadtests.stats import aggregated, read_stats
from service.engines.session import SessionSettings
from service.repository import ModelVersion, RepositoryError, list_versions, read_model
from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    repository: Path  # model repository holding the model (what `python -m export` writes)
    model: str = "sentiment"
    checkpoint: Path | None = None  # baseline's checkpoint; None: the manifest's source
    users: tuple[int, ...] = (1, 8, 32, 64)  # the load points
    run_time: str = "20s"  # per point; ~20 s gives p99 from >1000 requests at 32+ users
    providers: Literal["cpu", "cuda"] = (
        "cpu"  # NLPSERVE_PROVIDERS; "cuda" also puts the baseline on the GPU
    )
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))  # ORT intra-op
    data_dir: str = ""  # payloads: '' = ../shared/data when present, 'bundled', or a path
    versions: tuple[int, ...] = ()  # (a) versions; () = served (+ newest fp32 if that is not)
    servers: tuple[str, ...] = ("batching", "unbatched", "baseline", *PEERS)
    peer_venvs: Path | None = None  # venvs of the peers (`make peers`); None: no peers
    label_probe_texts: int = 64  # texts every server labels before its load (agreement check)
    # Extra (a) servers: (name, ((NLPSERVE_ variable, value), ...)) on the served version.
    variants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    engine_seconds: float = 3.0  # engine-only measurement per batch size
    # `python -m export bench`'s JSON: its ORT cells are quoted as the offline ceiling.
    engine_json: Path = Path("reports/engine-benchmark.json")
    work_dir: Path = Path("runs/bench-serving")
    report: Path = Path("reports/serving-benchmark.md")


@dataclass(frozen=True)
class ServerSpec:
    key: str  # directory name under work_dir
    label: str  # in tables and the plot
    kind: str  # "batching" | "unbatched" | "baseline" | "peer"
    command: list[str]
    env: dict[str, str]
    version: int | None = None  # nlpserve's pinned version (and the peers' version)
    precision: str = "fp32"
    variant: str = ""  # name of the --variant this server runs ('' = the model's own config)
    ready_path: str = "/v2/health/ready"

    @property
    def nlpserve(self) -> bool:
        return self.kind in ("batching", "unbatched")


class BenchError(RuntimeError):
    """Bad input (repository, checkpoint): the CLI prints it and exits 2."""


def choose_versions(model_dir: Path, requested: tuple[int, ...]) -> list[ModelVersion]:
    """The versions for (a): as requested, else the served one plus the newest fp32 one."""
    try:
        if requested:
            return [read_model(model_dir, v) for v in requested]
        served = read_model(model_dir)
        chosen = [served]
        if served.manifest.precision != "fp32":
            every = [read_model(model_dir, n) for n in list_versions(model_dir)]
            chosen += [v for v in every if v.manifest.precision == "fp32"][-1:]
        return chosen
    except RepositoryError as e:
        raise BenchError(str(e)) from None


def baseline_checkpoint(config: BenchConfig, served: ModelVersion) -> Path:
    checkpoint = config.checkpoint
    if checkpoint is None and served.manifest.source_checkpoint:
        checkpoint = Path(served.manifest.source_checkpoint)
    if checkpoint is None or not (checkpoint / "config.json").is_file():
        raise BenchError(
            f"no PyTorch checkpoint for the baseline at {checkpoint} (manifest of "
            f"{served.path} names {served.manifest.source_checkpoint!r}); pass --checkpoint DIR"
        )
    return checkpoint


def single_model_repository(config: BenchConfig) -> Path:
    """work_dir/repository holding only the benchmarked model (a symlink), so nlpserve loads
    and warms up nothing else."""
    repo = config.work_dir / "repository"
    repo.mkdir(parents=True, exist_ok=True)
    link = repo / config.model
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((config.repository / config.model).resolve(), target_is_directory=True)
    return repo


def server_specs(
    config: BenchConfig, versions: list[ModelVersion], checkpoint: Path
) -> list[ServerSpec]:
    repo = single_model_repository(config)
    nlpserve_env = {
        "NLPSERVE_PROVIDERS": config.providers,
        "NLPSERVE_INTRA_OP_THREADS": str(config.threads),
        "NLPSERVE_LOG_LEVEL": "warning",  # no per-request access log line (the baseline too)
        "NLPSERVE_LOG_FORMAT": "text",
    }
    nlpserve = nlpserve_command(repo)
    specs = []
    if "batching" in config.servers:
        for v in versions:
            env = {**nlpserve_env, "NLPSERVE_PINNED_VERSIONS": f"{config.model}={v.version}"}
            label = f"(a) nlpserve batching {v.manifest.precision}"
            specs.append(
                ServerSpec(
                    f"a-batching-v{v.version}",
                    label,
                    "batching",
                    nlpserve,
                    env,
                    v.version,
                    v.manifest.precision,
                )
            )
    served = versions[0]
    for name, settings in config.variants:
        env = {
            **nlpserve_env,
            "NLPSERVE_PINNED_VERSIONS": f"{config.model}={served.version}",
            **dict(settings),
        }
        specs.append(
            ServerSpec(
                f"a-{name}-v{served.version}",
                f"(a) nlpserve batching {served.manifest.precision} [{name}: "
                + ", ".join(f"{k.removeprefix('NLPSERVE_').lower()}={v}" for k, v in settings)
                + "]",
                "batching",
                nlpserve,
                env,
                served.version,
                served.manifest.precision,
                name,
            )
        )
    if "unbatched" in config.servers:
        env = {
            **nlpserve_env,
            "NLPSERVE_PINNED_VERSIONS": f"{config.model}={served.version}",
            "NLPSERVE_MAX_BATCH_SIZE": "1",
        }
        label = f"(b) nlpserve max_batch_size=1 {served.manifest.precision}"
        specs.append(
            ServerSpec(
                f"b-unbatched-v{served.version}",
                label,
                "unbatched",
                nlpserve,
                env,
                served.version,
                served.manifest.precision,
            )
        )
    if "baseline" in config.servers:
        device = "cuda" if config.providers == "cuda" else "cpu"
        command = [
            sys.executable,
            "-m",
            "loadtests.baselines.app",
            "--checkpoint",
            str(checkpoint),
            "--model-name",
            config.model,
            "--device",
            device,
            "--log-level",
            "warning",
        ]
        specs.append(
            ServerSpec("c-baseline", "(c) FastAPI + PyTorch per request", "baseline", command, {})
        )
    specs += peer_specs(config, repo, served)
    return specs


def peer_specs(config: BenchConfig, repo: Path, served: ModelVersion) -> list[ServerSpec]:
    """(d), (e): the serving frameworks, on the served version with nlpserve's ORT threads and
    max batch size."""
    if config.peer_venvs is None:
        return []
    specs = []
    for name, peer in PEERS.items():
        if name not in config.servers:
            continue
        try:
            command = peer_command(
                name,
                config.peer_venvs,
                repo,
                config.model,
                served.version,
                config.threads,
                served.config.batching.max_batch_size,
            )
        except FileNotFoundError as e:
            raise BenchError(str(e)) from None
        specs.append(
            ServerSpec(
                f"peer-{name}",
                peer.label,
                "peer",
                command,
                peer_env(),
                served.version,
                served.manifest.precision,
                ready_path=peer.ready_path,
            )
        )
    return specs


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


def measure_point(
    spec: ServerSpec, server: psutil.Process, host: str, users: int, config: BenchConfig
) -> Point:
    """One Locust run against a running server, with CPU and batching deltas around it."""
    extra = ["--classify-model", config.model, "--think-time", "0", "--items-per-request", "1"]
    if config.data_dir:
        extra += ["--data-dir", config.data_dir]
    before = scrape_batch_counters(host, config.model) if spec.nlpserve else None
    server_cpu, client_cpu = _cpu_seconds(server), _children_cpu_seconds()
    # All users start within a second (spawn rate = users): the run is the steady state.
    stats_csv = run_once(
        host, users, users, config.run_time, config.work_dir / spec.key, ["ClassifyUser"], extra
    )
    window_s = parse_duration(config.run_time)
    server_cpu = (_cpu_seconds(server) - server_cpu) / window_s
    client_cpu = (_children_cpu_seconds() - client_cpu) / window_s
    batches = (scrape_batch_counters(host, config.model) - before) if before else None
    stats = aggregated(read_stats(stats_csv))
    return Point(users, stats, server_cpu, client_cpu, batches, str(stats_csv))


def run_server(spec: ServerSpec, config: BenchConfig, probe_texts: list[str]) -> ServerRun:
    """Start one server, label `probe_texts`, measure every user count against it, stop it."""
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
            points.append(measure_point(spec, server, host, users, config))
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
            rates = engine_only_rates(
                model_dir, run.version, texts, sizes, settings, config.engine_seconds
            )
            run.engine_only = {r.batch_size: r.sequences_per_s for r in rates}


def run_benchmark(config: BenchConfig, command_line: str) -> BenchResult:
    model_dir = config.repository / config.model
    if not (model_dir / "config.json").is_file():
        raise BenchError(f"{model_dir} is not a model directory (no config.json)")
    versions = choose_versions(model_dir, config.versions)
    checkpoint = baseline_checkpoint(config, versions[0])
    texts = load_payloads(resolve_data_dir(config.data_dir)).texts
    result = BenchResult.describe(config_dict(config), command_line, versions, checkpoint)
    probe_texts = texts[: config.label_probe_texts]
    for spec in server_specs(config, versions, checkpoint):
        result.runs.append(run_server(spec, config, probe_texts))
    add_label_agreement(result)
    if "batching" in config.servers:
        add_engine_only(result, config, texts)
    if config.engine_json.is_file():
        result.add_export_benchmark(config.engine_json)
    return result


def add_label_agreement(result: BenchResult) -> None:
    """Each run's agreement with the first (a) run's labels on the probe texts (the first run
    itself included: 1.0), so the report shows every server computed the same answers."""
    reference = next((r.labels for r in result.runs if r.kind == "batching" and r.labels), None)
    if reference is None:
        return
    for run in result.runs:
        if run.labels:
            run.label_agreement = label_agreement(reference, run.labels)


def parse_variant(spec: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """'w2:workers_per_model=2,intra_op_threads=1' -> ('w2', (('NLPSERVE_WORKERS_PER_MODEL',
    '2'), ...)); every setting must be a field of service.settings.Settings."""
    name, sep, body = spec.partition(":")
    if not sep or not name.isidentifier() or not body:
        raise argparse.ArgumentTypeError(
            f"--variant {spec!r}: expected NAME:SETTING=VALUE[,SETTING=VALUE...]"
        )
    settings = []
    for pair in body.split(","):
        key, eq, value = pair.partition("=")
        field_name = key.strip().lower().removeprefix("nlpserve_")
        if not eq or field_name not in Settings.model_fields:
            raise argparse.ArgumentTypeError(
                f"--variant {spec!r}: {key.strip()!r} is not an nlpserve setting"
            )
        settings.append((f"NLPSERVE_{field_name.upper()}", value.strip()))
    return name, tuple(settings)


def config_dict(config: BenchConfig) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_serving",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    defaults = BenchConfig(repository=Path("model_repository"))
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--checkpoint", type=Path, help="baseline checkpoint (default: manifest)")
    parser.add_argument("--users", type=int, nargs="+", default=list(defaults.users))
    parser.add_argument("--run-time", default=defaults.run_time)
    parser.add_argument("--providers", choices=["cpu", "cuda"], default=defaults.providers)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--data-dir", default=defaults.data_dir)
    parser.add_argument("--versions", type=int, nargs="+", default=[])
    parser.add_argument(
        "--servers", nargs="+", choices=list(defaults.servers), default=list(defaults.servers)
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="NAME:SETTING=VALUE[,SETTING=VALUE]",
        help="one more (a) server with these nlpserve settings (repeatable)",
    )
    parser.add_argument(
        "--peer-venvs",
        type=Path,
        help="folder of the peers' venvs (`make peers`): adds BentoML and Ray Serve servers",
    )
    parser.add_argument("--engine-seconds", type=float, default=defaults.engine_seconds)
    parser.add_argument(
        "--engine-json",
        type=Path,
        default=defaults.engine_json,
        help="export benchmark JSON to quote (skipped when absent)",
    )
    parser.add_argument("--work-dir", type=Path, default=defaults.work_dir)
    parser.add_argument("--report", type=Path, default=defaults.report)
    for action in parser._actions:  # argparse prints defaults only beside some help text
        action.help = action.help or "(default: %(default)s)"
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = BenchConfig(
        repository=args.repository,
        model=args.model,
        checkpoint=args.checkpoint,
        users=tuple(args.users),
        run_time=args.run_time,
        providers=args.providers,
        threads=args.threads,
        data_dir=args.data_dir,
        versions=tuple(args.versions),
        servers=tuple(args.servers),
        variants=tuple(args.variant),
        peer_venvs=args.peer_venvs,
        engine_seconds=args.engine_seconds,
        engine_json=args.engine_json,
        work_dir=args.work_dir,
        report=args.report,
    )
    try:
        parse_duration(config.run_time)
        started = time.monotonic()
        result = run_benchmark(
            config,
            "python -m loadtests.bench_serving "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        )
    except (BenchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.duration_s = time.monotonic() - started
    config.work_dir.mkdir(parents=True, exist_ok=True)
    (config.work_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    write_report(result, config.report, peer_goals(result), peer_table(result))
    print(
        f"wrote {config.report}, {config.report.with_suffix('.png')}, "
        f"{config.work_dir / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
