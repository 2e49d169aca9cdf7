"""Read Locust's CSV output (`--csv PREFIX` writes PREFIX_stats.csv and PREFIX_failures.csv)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"  # the name of Locust's all-endpoints row


@dataclass(frozen=True)
class EndpointStats:
    """One row of PREFIX_stats.csv (times in ms; None where Locust wrote N/A: no requests)."""

    method: str  # "POST", or "" for the Aggregated row
    name: str
    requests: int
    failures: int
    rps: float
    avg_ms: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float


@dataclass(frozen=True)
class FailureRow:
    """One row of PREFIX_failures.csv."""

    method: str
    name: str
    error: str
    occurrences: int


def _ms(value: str) -> float | None:
    return None if value in ("N/A", "") else float(value)


def read_stats(stats_csv: Path) -> list[EndpointStats]:
    """Every row of a Locust stats CSV, the Aggregated row last (as Locust writes it)."""
    with stats_csv.open(newline="", encoding="utf-8") as f:
        return [
            EndpointStats(
                method=row["Type"],
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                avg_ms=float(row["Average Response Time"]),
                p50_ms=_ms(row["50%"]),
                p95_ms=_ms(row["95%"]),
                p99_ms=_ms(row["99%"]),
                max_ms=float(row["Max Response Time"]),
            )
            for row in csv.DictReader(f)
        ]


def aggregated(rows: list[EndpointStats]) -> EndpointStats:
    """The Aggregated row of read_stats()' result."""
    for row in rows:
        if row.name == AGGREGATED:
            return row
    raise ValueError("no Aggregated row: not a Locust stats CSV")


def failures_path(stats_csv: Path) -> Path:
    """PREFIX_failures.csv next to PREFIX_stats.csv."""
    if not stats_csv.name.endswith("_stats.csv"):
        raise ValueError(f"{stats_csv} is not named PREFIX_stats.csv")
    return stats_csv.with_name(stats_csv.name[: -len("_stats.csv")] + "_failures.csv")


def read_failures(failures_csv: Path) -> list[FailureRow]:
    with failures_csv.open(newline="", encoding="utf-8") as f:
        return [
            FailureRow(row["Method"], row["Name"], row["Error"], int(row["Occurrences"]))
            for row in csv.DictReader(f)
        ]


# Our locustfile writes "HTTP 503: ..."; Locust's own messages (other locustfiles, HttpUser) read
# "HTTPError('503 Server Error: ...')" or "BadStatusCode('...', code=503)".
_STATUS = re.compile(r"HTTP (\d{3})\b|\b(\d{3}) (?:Server|Client) Error|code=(\d{3})\b")
# No HTTP answer at all: our "connection error: ..." plus the exception names Locust reports
# for refused/reset/closed sockets and timeouts with either of its HTTP clients.
_CONNECTION = re.compile(
    r"connection error|ConnectionError|ConnectionRefused|ConnectionReset|ConnectionAborted|"
    r"RemoteDisconnected|BrokenPipe|Timeout|timed out|socket\.|gaierror|"
    r"IncompleteRead|ProtocolError",
    re.IGNORECASE,
)


def classify_failure(error: str) -> str:
    """'server_error' (5xx), 'client_error' (4xx), 'connection' (no answer) or 'other'."""
    match = _STATUS.search(error)
    if match:
        code = int(next(g for g in match.groups() if g))
        if code >= 500:
            return "server_error"
        if code >= 400:
            return "client_error"
    if _CONNECTION.search(error):
        return "connection"
    return "other"
