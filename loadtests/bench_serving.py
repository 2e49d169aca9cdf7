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

This module is the command; loadtests.bench_config holds its options, bench_servers the servers'
command lines, bench_measure one server's runs, bench_report and bench_peers the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from loadtests.bench_config import BenchConfig, BenchError, Variant
from loadtests.bench_measure import add_engine_only, add_label_agreement, run_server
from loadtests.bench_peers import peer_goals, peer_table
from loadtests.bench_report import BenchResult, write_report
from loadtests.bench_servers import baseline_checkpoint, choose_versions, server_specs
from loadtests.payloads import load_payloads, resolve_data_dir
from loadtests.run import HelpFormatter, parse_duration
from model_src.common.options import from_args
from service.settings import Settings


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
        result.runs.append(run_server(spec, config, probe_texts, texts))
    add_label_agreement(result)
    if "batching" in config.servers:
        add_engine_only(result, config, texts)
    if config.engine_json.is_file():
        result.add_export_benchmark(config.engine_json)
    return result


def parse_variant(spec: str) -> Variant:
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
    parser.add_argument(
        "--load",
        choices=["locust", "raw"],
        default=defaults.load,
        help="locust: Locust's ClassifyUser; raw: loadtests.raw_http's closed loop (the same "
        "texts, ~1/50 of Locust's client CPU per request) (default: %(default)s)",
    )
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
    parser.add_argument(
        "--report", type=Path, default=defaults.report, help="(default: WORK_DIR/report.md)"
    )
    for action in parser._actions:  # argparse prints defaults only beside some help text
        action.help = action.help or "(default: %(default)s)"
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = from_args(BenchConfig, args, variants=tuple(args.variant))
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
    report = config.report or config.work_dir / "report.md"
    write_report(result, report, peer_goals(result), peer_table(result))
    print(f"wrote {report}, {report.with_suffix('.png')}, {config.work_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
