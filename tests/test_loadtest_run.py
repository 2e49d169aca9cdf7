"""Load-test tooling against real servers: the headless runner on nlpserve, the baseline app,
the payload pools, and a short serving benchmark. Models are tiny (hidden 32, 2 layers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loadtests import bench_serving, run, slo
from loadtests.bench_report import BenchResult, Point, ServerRun, goals
from loadtests.payloads import load_payloads, resolve_data_dir
from loadtests.run import parse_duration
from loadtests.server_metrics import BatchCounters
from loadtests.stats import EndpointStats, read_stats
from service.schemas import ClassifyResponse

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sentiment_checkpoint(model_repository: Path) -> Path:
    """The tiny PyTorch checkpoint the shared repository's sentiment model was exported from."""
    manifest = json.loads((model_repository / "sentiment" / "1" / "manifest.json").read_text())
    return Path(manifest["source_checkpoint"])


def test_headless_run_writes_csv_html_summary_plot_and_meets_the_slo(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m loadtests.run --serve-repository` starts nlpserve on the tiny sentiment, nli
    and translator models and loads every route (the three task routes and V2) at two user
    counts: Locust CSV + HTML per run, summary, a PNG curve; the SLO check passes."""
    out = tmp_path / "loadtest"
    argv = ["--serve-repository", str(model_repository), "--users", "1", "8",
            "--spawn-rate", "10", "--run-time", "3s", "--out", str(out),
            "--data-dir", "bundled", "--beam-size", "2", "--max-new-tokens", "8",
            "--slo-p95-ms", "5000"]  # fmt: skip
    assert run.main(argv) == 0
    for users in (1, 8):
        for suffix in ("_stats.csv", "_failures.csv", "_stats_history.csv", ".html"):
            assert (out / f"users{users}{suffix}").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["users"] for row in summary] == [1, 8]
    assert all(row["requests"] > 0 and row["failures"] == 0 for row in summary)
    assert (out / "loadtest.png").read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().out.count("PASS") == 2  # --slo-p95-ms: each run checked
    routes = {row.name for row in read_stats(out / "users8_stats.csv")}
    assert {"/v1/classify", "/v1/nli", "/v1/translate", "/v2/models/sentiment/infer"} <= routes
    stats = [str(out / f"users{u}_stats.csv") for u in (1, 8)]
    assert slo.main(["--stats", *stats, "--p95-ms", "5000", "--per-route"]) == 0
    assert (out / "server.log").stat().st_size > 0


def test_runner_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown user classes and malformed durations are a clear one-line error, exit 2."""
    assert run.main(["--host", "http://x", "--user-classes", "NoSuchUser"]) == 2
    assert run.main(["--host", "http://x", "--run-time", "30 seconds"]) == 2
    assert "error:" in capsys.readouterr().err
    assert parse_duration("1m30s") == 90 and parse_duration("20") == 20


def test_baseline_app_answers_in_nlpserve_response_shape(sentiment_checkpoint: Path) -> None:
    """The FastAPI + PyTorch baseline takes the same request and returns a body that validates
    against nlpserve's own ClassifyResponse schema (truncation reported the same way)."""
    from loadtests.baselines.app import create_app

    long_text = "a very long review " * 200  # past max_length (128 tokens)
    with TestClient(create_app(sentiment_checkpoint)) as client:
        response = client.post("/v1/classify", json={"texts": ["fine", long_text]})
        assert client.get("/v2/health/ready").status_code == 200
    assert response.status_code == 200
    body = ClassifyResponse.model_validate(response.json())
    assert [r.label in ("negative", "positive") for r in body.results] == [True, True]
    assert body.truncated == [1]


def test_payloads_come_from_the_data_dir_with_a_length_mix(tmp_path: Path) -> None:
    """With a ../shared/data-like directory, pools hold its texts; classification texts mix
    single sentences with multi-sentence reviews; the pools are the same on every call."""
    (tmp_path / "sst2").mkdir()
    sentences = [f"sentence number {i} ." for i in range(50)]
    (tmp_path / "sst2" / "dev.tsv").write_text(
        "label\tsentence\n" + "".join(f"{i % 2}\t{s}\n" for i, s in enumerate(sentences))
    )
    (tmp_path / "snli").mkdir()
    (tmp_path / "snli" / "dev.tsv").write_text(
        'premise\thypothesis\tlabel\nA "quoted" man.\tA man.\tentailment\n'
    )
    (tmp_path / "multi30k").mkdir()
    (tmp_path / "multi30k" / "val.en").write_text("A dog runs.\nTwo cats sleep.\n")
    payloads = load_payloads(tmp_path, pool_size=400)
    assert payloads.origin == f"dataset:{tmp_path}"
    assert payloads.pairs == [('A "quoted" man.', "A man.")]
    assert sorted(payloads.sources) == ["A dog runs.", "Two cats sleep."]
    counts = [text.count(" .") for text in payloads.texts]
    assert set(counts) >= {1, 2, 5} and max(counts) <= 8
    assert all(s in sentences for t in payloads.texts for s in t.replace(" . ", " .|").split("|"))
    assert load_payloads(tmp_path, pool_size=400) == payloads


def test_payloads_fall_back_to_bundled_texts(tmp_path: Path) -> None:
    """Without dataset files (or with --data-dir bundled) the bundled sample texts are used."""
    assert load_payloads(tmp_path).origin == "bundled"
    assert resolve_data_dir("bundled") is None
    assert load_payloads(resolve_data_dir("bundled")).pairs


def _point(users: int, rps: float, p95: float, batches: BatchCounters | None = None) -> Point:
    stats = EndpointStats("", "Aggregated", 100, 0, rps, p95 / 2, p95 / 2, p95, p95, p95)
    return Point(users, stats, 1.0, 0.2, batches, "x.csv")


def test_goals_compare_batching_with_unbatched_baseline_and_engine_only() -> None:
    """At 32 users: (a)/(c) throughput >= 4x with lower p95, (a) >= 90% of the engine-only
    rate at the batch size it formed, (a)/(b) >= 1.3x; each judged from the measured points."""
    batches = BatchCounters(runs=100, sequences=1600, padded_tokens=0, engine_seconds=8)
    a = ServerRun("a", "(a)", "batching", 1, "fp32", [_point(32, 200, 150, batches)])
    a.engine_only = {16: 220.0}  # served 200 of 220: 91%
    b = ServerRun("b", "(b)", "unbatched", 1, "fp32", [_point(32, 120, 400)])
    c = ServerRun("c", "(c)", "baseline", None, "fp32", [_point(32, 40, 900)])
    result = BenchResult({}, "cmd", {}, [], "ck", {}, [a, b, c])
    assert [met for _, _, met in goals(result)] == [True, True, True]
    a.engine_only = {16: 300.0}  # served 200 of 300: 67%
    c.points = [_point(32, 60, 100)]  # only 3.3x, and a lower p95 than (a)
    assert [met for _, _, met in goals(result)] == [False, False, True]


def test_serving_benchmark_end_to_end_on_a_tiny_model(
    model_repository: Path, sentiment_checkpoint: Path, tmp_path: Path
) -> None:
    """A 2-second point per server for nlpserve (batching) and the baseline: the report, plot and
    results.json hold measured numbers, including /metrics batches and engine-only rates, and
    the export benchmark's ORT cells are quoted."""
    report = tmp_path / "serving-benchmark.md"
    engine_json = tmp_path / "engine-benchmark.json"  # the shape `python -m export bench` writes
    cell = {"engine": "ort-optimized", "batch": 8, "seq_len": 64, "seq_per_s": 123.4}
    engine_json.write_text(json.dumps({"command": "x", "classifier": {"cells": [cell]}}))
    argv = ["--repository", str(model_repository), "--users", "2", "--run-time", "1s",
            "--servers", "batching", "baseline", "--threads", "1", "--engine-seconds", "0.1",
            "--variant", "w2:workers_per_model=2,NLPSERVE_MAX_QUEUE_DELAY_MS=0",
            "--data-dir", "bundled", "--work-dir", str(tmp_path / "work"),
            "--engine-json", str(engine_json),
            "--report", str(report)]  # fmt: skip
    assert bench_serving.main(argv) == 0
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert [r["kind"] for r in results["runs"]] == ["batching", "batching", "baseline"]
    variant = results["runs"][1]
    assert variant["variant"] == "w2" and variant["points"][0]["stats"]["failures"] == 0
    # The variant's server really ran with its settings (recorded from its /v1/models).
    assert variant["batching"] == {
        "max_batch_size": 32, "max_batch_tokens": 8192, "max_queue_delay_ms": 0.0, "workers": 2,
        "scheduling": "request",  # a classifier's batches are formed per request
    }  # fmt: skip
    assert results["runs"][0]["batching"]["workers"] == 1
    assert results["checkpoint"] == str(sentiment_checkpoint)  # the manifest's source
    batching = results["runs"][0]["points"][0]
    assert batching["stats"]["requests"] > 0 and batching["stats"]["failures"] == 0
    assert batching["mean_batch_size"] >= 1 and batching["engine_ceiling_seq_per_s"] > 0
    assert batching["server_cpu_cores"] > 0
    text = report.read_text()
    assert "(a) nlpserve batching fp32" in text and "(c) FastAPI + PyTorch" in text
    assert "[w2: workers_per_model=2, max_queue_delay_ms=0]" in text
    assert "| ort-optimized | 8 | 123 |" in text
    assert report.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    assert parse_duration(bench_serving.BenchConfig(Path(".")).run_time) > 0


def test_serving_benchmark_with_the_raw_load(model_repository: Path, tmp_path: Path) -> None:
    """--load raw: the raw closed loop instead of Locust, against nlpserve and the baseline:
    requests answered without failures, percentiles in order, the client's CPU measured (this
    process), the report naming the load generator, written into the work dir when no --report
    is given (an exploratory run leaves reports/ alone)."""
    report = tmp_path / "work" / "report.md"
    argv = ["--repository", str(model_repository), "--users", "1", "3", "--run-time", "1s",
            "--servers", "batching", "baseline", "--threads", "1", "--engine-seconds", "0.1",
            "--load", "raw", "--data-dir", "bundled", "--work-dir", str(tmp_path / "work"),
            "--engine-json", str(tmp_path / "none.json")]  # fmt: skip
    assert bench_serving.main(argv) == 0
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["config"]["load"] == "raw"
    for run_ in results["runs"]:
        assert [p["users"] for p in run_["points"]] == [1, 3]
        for point in run_["points"]:
            stats = point["stats"]
            assert stats["requests"] > 0 and stats["failures"] == 0 and stats["rps"] > 0
            assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
            assert point["client_cpu_cores"] > 0 and point["server_cpu_cores"] > 0
    assert "Load: loadtests.raw_http's closed loop" in report.read_text()


def test_variant_option_names_only_real_settings(capsys: pytest.CaptureFixture[str]) -> None:
    """`--variant` maps setting names to NLPSERVE_* variables and rejects unknown ones."""
    assert bench_serving.parse_variant("w2:workers_per_model=2, intra_op_threads=1") == (
        "w2",
        (("NLPSERVE_WORKERS_PER_MODEL", "2"), ("NLPSERVE_INTRA_OP_THREADS", "1")),
    )
    with pytest.raises(SystemExit):
        bench_serving.main(["--repository", ".", "--variant", "x:no_such_setting=1"])
    assert "not an nlpserve setting" in capsys.readouterr().err
