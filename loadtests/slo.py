"""SLO check on Locust CSV output: no 5xx, no connection errors, p95 within a bound.

    python -m loadtests.slo --stats runs/loadtest/users8_stats.csv --p95-ms 500

Exit status 0 when every given run meets the SLO, 1 when one does not, 2 on unreadable input.
4xx answers (429 overload, 413/422 limits) and malformed 200s are listed but do not fail the
check by themselves: they are the service saying no on purpose; bound them with
--max-failure-ratio when a run should have none.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.stats import (
    AGGREGATED,
    aggregated,
    classify_failure,
    failures_path,
    read_failures,
    read_stats,
)


@dataclass(frozen=True)
class SloConfig:
    p95_ms: float  # bound on the 95th percentile latency, in milliseconds
    per_route: bool = False  # also hold every route (not only the aggregate) to the bound
    max_failure_ratio: float | None = None  # bound on all failures / requests; None: no bound


@dataclass
class SloReport:
    stats_csv: Path
    requests: int = 0
    p95_ms: float | None = None  # of the aggregate
    failure_counts: Counter[str] = field(default_factory=Counter)  # by classify_failure kind
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations


def check_slo(stats_csv: Path, config: SloConfig, failures_csv: Path | None = None) -> SloReport:
    """Judge one Locust run (its PREFIX_stats.csv, and PREFIX_failures.csv beside it)."""
    report = SloReport(stats_csv)
    rows = read_stats(stats_csv)
    total = aggregated(rows)
    report.requests, report.p95_ms = total.requests, total.p95_ms
    if total.requests == 0:
        report.violations.append("no requests were made: nothing to judge")
        return report

    failures_csv = failures_csv or failures_path(stats_csv)
    if failures_csv.is_file():
        for failure in read_failures(failures_csv):
            report.failure_counts[classify_failure(failure.error)] += failure.occurrences
    elif total.failures:
        report.violations.append(f"{total.failures} failures but no {failures_csv.name} to sort")

    if n := report.failure_counts["server_error"]:
        report.violations.append(f"{n} responses with a 5xx status")
    if n := report.failure_counts["connection"]:
        report.violations.append(f"{n} connection errors (no HTTP answer)")
    judged = [total] + ([r for r in rows if r.name != AGGREGATED] if config.per_route else [])
    for row in judged:
        if row.p95_ms is not None and row.p95_ms > config.p95_ms:
            report.violations.append(
                f"p95 of {row.name} is {row.p95_ms:.0f} ms > {config.p95_ms:g}"
            )
    if config.max_failure_ratio is not None:
        ratio = total.failures / total.requests
        if ratio > config.max_failure_ratio:
            report.violations.append(f"failure ratio {ratio:.4f} > {config.max_failure_ratio:g}")
    return report


def format_report(report: SloReport, config: SloConfig) -> str:
    p95 = "n/a" if report.p95_ms is None else f"{report.p95_ms:.0f} ms"
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(report.failure_counts.items())) or "none"
    head = "PASS" if report.passed else "FAIL"
    lines = [
        f"{head} {report.stats_csv}: {report.requests} requests, p95 {p95} "
        f"(bound {config.p95_ms:g} ms), failures: {kinds}"
    ]
    lines += [f"  - {v}" for v in report.violations]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.slo", description=__doc__)
    parser.add_argument(
        "--stats", type=Path, nargs="+", required=True, help="Locust PREFIX_stats.csv file(s)"
    )
    parser.add_argument("--p95-ms", type=float, required=True, help="p95 latency bound (ms)")
    parser.add_argument("--per-route", action="store_true", help="hold every route to the bound")
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=None,
        help="fail when all failures / requests exceeds this",
    )
    args = parser.parse_args(argv)
    config = SloConfig(args.p95_ms, args.per_route, args.max_failure_ratio)
    passed = True
    for stats_csv in args.stats:
        try:
            report = check_slo(stats_csv, config)
        except (OSError, ValueError, KeyError) as e:
            print(f"error: cannot read {stats_csv} as Locust CSV output: {e!r}", file=sys.stderr)
            return 2
        print(format_report(report, config))
        passed &= report.passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
