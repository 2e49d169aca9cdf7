"""The SLO check on real Locust output: runs of our locustfile against a small uvicorn app.

One module fixture makes four real headless Locust runs at once (3 s each): a clean one, one
against a model that answers every second request with 503, one with 429, and one against a
closed port.
The SLO check then reads Locust's own CSV files, in Locust's real column format.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.run import run_once
from loadtests.servers import free_port, wait_ready
from loadtests.slo import SloConfig, check_slo, main
from loadtests.stats import aggregated, classify_failure, read_stats

# A stand-in for nlpserve's /v1/classify: 20 ms per request (so p95 is well above 1 ms);
# model "flaky" answers every second request with 503, model "busy" every second with 429.
APP = textwrap.dedent(
    """
    import collections, time
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    served = collections.Counter()  # requests answered, by model

    @app.post("/v1/classify")
    def classify(body: dict):
        time.sleep(0.02)
        model = body["model"]
        served[model] += 1
        if served[model] % 2 == 0 and model in ("flaky", "busy"):
            status = 503 if model == "flaky" else 429
            return JSONResponse({"error": "no"}, status_code=status)
        result = {"label": "positive", "score": 0.9, "scores": {"positive": 0.9}}
        return {"model": model, "version": "1", "results": [result] * len(body["texts"])}

    @app.get("/served")
    def count():
        return served

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}
    """
)


def run_locust(host: str, model: str, out: Path) -> Path:
    """3 s, 2 users with 10-30 ms think time, ClassifyUser only, bundled texts."""
    extra = ["--classify-model", model, "--think-time", "0.01-0.03", "--data-dir", "bundled"]
    return run_once(host, 2, 10, "3s", out, ["ClassifyUser"], extra)


@dataclass
class Runs:
    stats: dict[str, Path]  # {'clean'|'flaky'|'busy'|'refused': PREFIX_stats.csv}
    served: dict[str, int]  # requests the stand-in answered, by model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Real Locust runs against the stand-in app (and a closed port)."""
    tmp = tmp_path_factory.mktemp("slo")
    (tmp / "stand_in.py").write_text(APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stand_in:app", "--app-dir", str(tmp),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
    )  # fmt: skip
    try:
        host = f"http://127.0.0.1:{port}"
        wait_ready(host, timeout_s=30)
        jobs = {
            "clean": (host, "sentiment"),
            "flaky": (host, "flaky"),
            "busy": (host, "busy"),
            "refused": (f"http://127.0.0.1:{free_port()}", "sentiment"),
        }
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {
                name: pool.submit(run_locust, url, model, tmp / name)
                for name, (url, model) in jobs.items()
            }
            stats = {name: f.result() for name, f in futures.items()}
        with urllib.request.urlopen(f"{host}/served", timeout=5) as response:
            return Runs(stats, json.load(response))
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_clean_run_passes(runs: Runs) -> None:
    """A run with only 200s and p95 under the bound passes the SLO."""
    report = check_slo(runs.stats["clean"], SloConfig(p95_ms=2000))
    assert report.passed, report.violations
    assert report.requests > 0


def test_5xx_fails_the_slo(runs: Runs) -> None:
    """Any 5xx answer fails the SLO, whatever the latency."""
    report = check_slo(runs.stats["flaky"], SloConfig(p95_ms=2000))
    assert not report.passed
    assert report.failure_counts["server_error"] > 0
    assert any("5xx" in v for v in report.violations)


def test_connection_errors_fail_the_slo(runs: Runs) -> None:
    """Requests that got no HTTP answer (connection refused) fail the SLO."""
    report = check_slo(runs.stats["refused"], SloConfig(p95_ms=2000))
    assert not report.passed
    assert report.failure_counts["connection"] == report.requests > 0


def test_p95_over_the_bound_fails_the_slo(runs: Runs) -> None:
    """A clean run fails when its p95 (about 20 ms here) is above the configured bound."""
    p95 = aggregated(read_stats(runs.stats["clean"])).p95_ms
    assert p95 is not None and p95 >= 20
    report = check_slo(runs.stats["clean"], SloConfig(p95_ms=5))
    assert not report.passed
    assert any("p95" in v for v in report.violations)


def test_429s_are_reported_but_do_not_fail_the_slo(runs: Runs) -> None:
    """Overload answers (429) are the service saying no on purpose: counted, not failing."""
    report = check_slo(runs.stats["busy"], SloConfig(p95_ms=2000))
    assert report.failure_counts["client_error"] > 0
    assert report.passed, report.violations
    strict = check_slo(runs.stats["busy"], SloConfig(p95_ms=2000, max_failure_ratio=0.0))
    assert not strict.passed


def test_the_stats_csv_counts_every_request_the_server_answered(runs: Runs) -> None:
    """Locust's own --csv files lag up to a second behind; ours count every request."""
    for model in ("sentiment", "flaky"):
        run = "clean" if model == "sentiment" else model
        assert aggregated(read_stats(runs.stats[run])).requests == runs.served[model]


def test_failure_messages_are_sorted_by_kind() -> None:
    """Our canonical messages and Locust's native ones map to 5xx / 4xx / connection."""
    assert classify_failure("CatchResponseError('HTTP 504: timed out')") == "server_error"
    assert classify_failure("HTTPError('502 Server Error: Bad Gateway for url: /x')") == (
        "server_error"
    )
    assert classify_failure("BadStatusCode('http://h/x', code=500)") == "server_error"
    assert classify_failure("CatchResponseError('HTTP 413: too large')") == "client_error"
    assert classify_failure("ConnectionResetError(104, 'Connection reset by peer')") == (
        "connection"
    )
    assert classify_failure("CatchResponseError('bad response: expected 1 results')") == "other"


def test_cli_exit_codes(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m loadtests.slo` exits 0 on pass, 1 on a violation, 2 on unreadable input."""
    assert main(["--stats", str(runs.stats["clean"]), "--p95-ms", "2000"]) == 0
    assert (
        main(["--stats", str(runs.stats["clean"]), str(runs.stats["flaky"]), "--p95-ms", "2000"])
        == 1
    )
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" in out
    assert (
        main(["--stats", str(runs.stats["clean"].with_name("missing_stats.csv")), "--p95-ms", "1"])
        == 2
    )
