"""Headless Locust runs at one or several user counts: CSV + HTML per run, a summary and a plot.

    python -m loadtests.run --host http://127.0.0.1:8000 --users 1 8 32 --spawn-rate 8 \\
        --run-time 30s --out runs/loadtest [--user-classes ClassifyUser ...] [--data-dir DIR ...]

--serve-repository DIR instead of --host starts nlpserve on DIR for the runs (its log:
OUT/server.log) and stops it afterwards. --slo-p95-ms MS ends with the SLO check of every run
(exit 1 when one fails; `python -m loadtests.slo` does the same on saved CSVs).

Writes, per user count N: usersN_stats.csv, usersN_failures.csv, usersN_exceptions.csv,
usersN_stats_history.csv, usersN.html; then summary.json, summary.md and loadtest.png
(throughput and p50/p95/p99 against users). Arguments it does not know (e.g. --data-dir,
--items-per-request, --think-time, --classify-model) go to the locustfile unchanged.
Locust runs in a subprocess: it monkey-patches the standard library with gevent on import.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from loadtests.plot import Curve, plot_load_curves
from loadtests.servers import nlpserve_command, running_server, wait_ready
from loadtests.slo import SloConfig, check_slo, format_report
from loadtests.stats import aggregated, read_stats

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = ("ClassifyUser", "NliUser", "TranslateUser", "V2InferUser")


def parse_duration(spec: str) -> float:
    """Seconds in a Locust duration: '30', '30s', '2m', '1h', '1m30s'."""
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        return float(spec)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", spec)
    if not parts or "".join(n + u for n, u in parts) != spec:
        raise ValueError(f"not a duration: {spec!r} (use e.g. 30s, 2m, 1m30s)")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * scale[u] for n, u in parts)


def locust_command(
    host: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    prefix: Path,
    user_classes: list[str],
    extra: list[str],
    locustfile: Path = LOCUSTFILE,
) -> list[str]:
    return [
        sys.executable, "-m", "locust",
        "-f", str(locustfile),
        "--headless",
        "--host", host,
        "--users", str(users),
        "--spawn-rate", str(spawn_rate),
        "--run-time", run_time,
        "--csv", str(prefix),
        "--html", str(prefix) + ".html",
        "--only-summary",
        "--loglevel", "WARNING",
        # Failures are judged by loadtests.slo, which tells 429s from 5xx; Locust's own exit
        # code would fail the run on any failure at all.
        "--exit-code-on-error", "0",
        "--stop-timeout", "5",  # let in-flight requests finish (and count) when time is up
        *extra,
        *user_classes,
    ]  # fmt: skip


def run_once(
    host: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    out: Path,
    user_classes: list[str],
    extra: list[str],
    locustfile: Path = LOCUSTFILE,
) -> Path:
    """One headless Locust run; returns the path of its stats CSV."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"users{users}"
    cmd = locust_command(host, users, spawn_rate, run_time, prefix, user_classes, extra, locustfile)
    logger.info("running: %s", " ".join(cmd))
    # Locust stops itself at run_time; the margin covers start-up, stop timeout and report.
    subprocess.run(cmd, check=True, timeout=parse_duration(run_time) + 60)
    # The locustfile's quit hook wrote complete copies of the CSVs (Locust's own lag behind).
    for kind in ("stats", "failures", "exceptions"):
        final = Path(f"{prefix}_{kind}.final.csv")
        if not final.is_file():
            raise RuntimeError(f"locust wrote no {final}: is {locustfile} our locustfile?")
        final.replace(Path(f"{prefix}_{kind}.csv"))
    return Path(f"{prefix}_stats.csv")


def summarize(runs: list[tuple[int, Path]], out: Path, label: str = "nlpserve") -> Curve:
    """summary.json + summary.md + loadtest.png from (users, stats CSV) pairs."""
    curve: Curve = sorted((users, aggregated(read_stats(csv))) for users, csv in runs)
    (out / "summary.json").write_text(
        json.dumps([{"users": u, **asdict(s)} for u, s in curve], indent=2) + "\n"
    )
    lines = [
        "| users | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for users, s in curve:
        lines.append(
            f"| {users} | {s.requests} | {s.failures} | {s.rps:.1f} | {s.p50_ms} | {s.p95_ms} "
            f"| {s.p99_ms} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot_load_curves({label: curve}, out / "loadtest.png", title=f"load test: {label}")
    return curve


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--host", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--serve-repository",
        type=Path,
        metavar="DIR",
        help="start nlpserve on this model repository (127.0.0.1, a free port) for the runs",
    )
    parser.add_argument(
        "--users",
        type=int,
        nargs="+",
        default=[8],
        help="concurrent users; several values give several runs and a curve",
    )
    parser.add_argument("--spawn-rate", type=float, default=8.0, help="users started per second")
    parser.add_argument("--run-time", default="30s", help="per run, e.g. 30s, 2m")
    parser.add_argument("--out", type=Path, default=Path("runs/loadtest"))
    parser.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait this long for /v2/health/ready to answer 200",
    )
    parser.add_argument(
        "--slo-p95-ms",
        type=float,
        metavar="MS",
        help="then run the SLO check (loadtests.slo) on every run: exit 1 on any 5xx, "
        "connection error or p95 above MS",
    )
    parser.add_argument(
        "--user-classes",
        nargs="+",
        default=[],
        metavar="CLASS",
        help=f"subset of {', '.join(USER_CLASSES)} (default: all, by weight)",
    )
    # Unknown options (and their values) go to the locustfile; hence no positional arguments.
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        parse_duration(args.run_time)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.user_classes) - set(USER_CLASSES))
    if unknown:
        print(f"error: unknown user classes {unknown}; use {USER_CLASSES}", file=sys.stderr)
        return 2
    if args.serve_repository:
        command = nlpserve_command(args.serve_repository)
        with running_server(command, log_path=args.out / "server.log") as (host, _):
            return run_all(host, args, extra)
    if args.wait_ready:
        wait_ready(args.host, args.wait_ready)
    return run_all(args.host, args, extra)


def run_all(host: str, args: argparse.Namespace, extra: list[str]) -> int:
    """One Locust run per user count, then the summary and plot."""
    runs = []
    for users in args.users:
        csv_path = run_once(
            host, users, args.spawn_rate, args.run_time, args.out, args.user_classes, extra
        )
        runs.append((users, csv_path))
    summarize(runs, args.out)
    print((args.out / "summary.md").read_text(), end="")
    per_run = ", ".join(f"users{users}_stats.csv, users{users}.html" for users, _ in runs)
    print(f"wrote in {args.out}: {per_run}, summary.md, loadtest.png")
    if args.slo_p95_ms is None:
        return 0
    config = SloConfig(p95_ms=args.slo_p95_ms)
    reports = [check_slo(stats_csv, config) for _, stats_csv in runs]
    for report in reports:
        print(format_report(report, config))
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
