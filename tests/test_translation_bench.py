"""loadtests/translation_bench.py and translation_slices.py end to end, very briefly, on the
tiny translator: both batching modes in one run, every figure of the report present."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtests.translation_bench import Workload, main, server_env
from loadtests.translation_slices import main as slices_main
from service.settings import available_cores


def test_benchmark_compares_step_and_request_batching(
    copy_repository: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    """Two user counts per mode, plus streams for the scheduler: requests answered without
    errors, latency percentiles, tokens/s, rows per step (scheduler) and sequences per run
    (request-level), time to the first piece (streams); a Markdown table on stdout."""
    sentences = tmp_path / "val.en"
    sentences.write_text("A dog runs.\nTwo men play football in a park.\nA woman reads.\n")
    out = tmp_path / "report.json"
    argv = [
        "--repository", str(copy_repository("translator")), "--sentences", str(sentences),
        "--users", "1", "4", "--duration", "0.5", "--max-new-tokens", "8", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["stream"], r["users"]) for r in rows] == [
        ("step", False, 1), ("step", False, 4), ("step", True, 1), ("step", True, 4),
        ("request-defaults", False, 1), ("request-defaults", False, 4),
    ]  # fmt: skip
    for r in rows:
        assert r["requests"] > 0 and r["errors"] == {} and r["req_per_s"] > 0
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
        assert r["generated_tokens_per_s"] > 0
        if r["mode"] == "step":
            assert r["mean_rows_per_step"] >= 1 and r["mean_sequences_per_run"] is None
        else:
            assert r["mean_sequences_per_run"] >= 1 and r["mean_rows_per_step"] is None
        assert (r["first_piece_ms"] is not None) == r["stream"]
    assert "| step | yes | 4 |" in capsys.readouterr().out


def test_benchmark_mixes_long_texts_and_reports_them_apart(
    copy_repository: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    """--long-every 2: every second request of a user is --long-join sentences in one text;
    latencies of the short and the long requests are reported apart, in every mode, request-
    level batching with two engine runs in flight and as issue 13 found it among them."""
    sentences = tmp_path / "val.en"
    sentences.write_text("A dog runs.\nTwo men play football in a park.\nA woman reads.\n")
    out = tmp_path / "report.json"
    argv = [
        "--repository", str(copy_repository("translator")), "--sentences", str(sentences),
        "--users", "2", "--duration", "0.6", "--max-new-tokens", "8", "--out", str(out),
        "--modes", "step", "request-2w", "request-as-filed", "--long-every", "2",
        "--long-join", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["stream"]) for r in rows] == [
        ("step", False),
        ("step", True),
        ("request-2w", False),
        ("request-as-filed", False),
    ]
    for r in rows:
        assert r["errors"] == {} and 0 < r["long_requests"] < r["requests"]
        assert r["short_latency_ms"]["p50"] is not None and r["long_latency_ms"]["p50"] > 0
    assert "short p50 / p95 ms" in capsys.readouterr().out


def test_servers_keep_their_modes_spin_policy() -> None:
    """--threads sets the intra-op threads of a mode that names none; no spin setting is forced
    on a mode (a two-thread baseline that never spins runs slower than its users would see it):
    the default modes get the service's, the issue's baseline spins as it did when filed."""
    assert server_env("step", 1) == {
        "NLPSERVE_INTRA_OP_THREADS": "1",
        "NLPSERVE_TRANSLATION_BATCHING": "step",
    }
    defaults = server_env("request-defaults", 1)
    assert defaults["NLPSERVE_INTRA_OP_THREADS"] == str(available_cores())
    assert "NLPSERVE_ALLOW_SPINNING" not in defaults
    as_filed = server_env("request-as-filed", 1)
    assert as_filed["NLPSERVE_INTRA_OP_THREADS"] == "2"
    assert as_filed["NLPSERVE_ALLOW_SPINNING"] == "true"
    assert as_filed["NLPSERVE_SPIN_ONLY_DURING_RUNS"] == "false"
    assert server_env("request-as-filed-nospin", 4)["NLPSERVE_ALLOW_SPINNING"] == "false"


def test_workload_sends_every_nth_request_long() -> None:
    workload = Workload(["a", "b", "c"], long_every=3, long_join=2)
    texts = [workload.text(user=1, request=r, users=2) for r in range(6)]
    # the user's sentences in turn (user 1 of 2: 1, 3, 5, ...); a long one starts at its own
    assert texts == [("b", False), ("a", False), ("c a", True), ("b", False), ("a", False),
                     ("c a", True)]  # fmt: skip
    assert Workload(["a", "b"]).text(0, 5, 1) == ("b", False)


def test_in_process_benchmark_reports_cpu_per_request(
    copy_repository: Callable[..., Path], tmp_path: Path
) -> None:
    """--in-process drives the scheduler and the batcher without HTTP, closed loop and open
    loop (--rates): every mode (the scheduler in lanes, in one lane encoding inside the step,
    request-level with one and with two engine runs in flight), each scheduler mode also with
    a token listener (a stream), rows per step / sequences per run, first tokens for streams,
    CPU ms per request."""
    sentences = tmp_path / "val.en"
    sentences.write_text("A dog runs.\nTwo men play football in a park.\n")
    out = tmp_path / "report.json"
    argv = [
        "--repository", str(copy_repository("translator")), "--sentences", str(sentences),
        "--users", "2", "--rates", "20", "--duration", "0.5", "--max-new-tokens", "6",
        "--in-process", "--modes", "step", "step-inline", "request", "request-2w",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["stream"], r["users"]) for r in rows] == [
        ("step", False, 2), ("step", False, "20/s open"),
        ("step", True, 2), ("step", True, "20/s open"),
        ("step-inline", False, 2), ("step-inline", False, "20/s open"),
        ("step-inline", True, 2), ("step-inline", True, "20/s open"),
        ("request", False, 2), ("request", False, "20/s open"),
        ("request-2w", False, 2), ("request-2w", False, "20/s open"),
    ]  # fmt: skip
    step, streamed, inline, request, two_runs = rows[0], rows[2], rows[4], rows[8], rows[10]
    assert two_runs["requests"] > 0 and two_runs["mean_sequences_per_run"] >= 1
    assert inline["requests"] > 0 and inline["mean_rows_per_step"] >= 1
    assert step["requests"] > 0 and request["requests"] > 0 and streamed["requests"] > 0
    assert step["mean_rows_per_step"] >= 1 and request["mean_sequences_per_run"] >= 1
    assert streamed["first_piece_ms"]["p50"] is not None
    assert step["first_piece_ms"] is None and request["first_piece_ms"] is None
    assert step["cpu_ms_per_request"] > 0 and request["cpu_ms_per_request"] > 0


def test_sliced_benchmark_alternates_two_live_servers(
    copy_repository: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    """loadtests.translation_slices: both servers up, the users alternating between them slice
    by slice; per mode the pooled req/s and latencies over every slice, per round a ratio."""
    sentences = tmp_path / "val.en"
    sentences.write_text("A dog runs.\nTwo men play football in a park.\nA woman reads.\n")
    out = tmp_path / "slices.json"
    argv = [
        "--repository", str(copy_repository("translator")), "--sentences", str(sentences),
        "--users", "3", "--slice", "0.4", "--warmup", "0.2", "--rounds", "3",
        "--max-new-tokens", "8", "--modes", "step", "request", "--out", str(out),
    ]  # fmt: skip
    assert slices_main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["modes"]) == ["step", "request"] and report["ratio"] == "step / request"
    for mode in report["modes"].values():
        assert mode["errors"] == {} and len(mode["slices_req_per_s"]) == 3
        assert all(r > 0 for r in mode["slices_req_per_s"])
        # pooled: every slice's answers over every slice's seconds
        assert mode["req_per_s"] == pytest.approx(sum(mode["slices_req_per_s"]) / 3, rel=0.02)
        assert mode["latency_ms"]["p50"] <= mode["latency_ms"]["p95"]
    step, request = report["modes"]["step"], report["modes"]["request"]
    assert report["round_ratios"] == [
        round(a / b, 3)
        for a, b in zip(step["slices_req_per_s"], request["slices_req_per_s"], strict=True)
    ]
    assert report["median_ratio"] == sorted(report["round_ratios"])[1]
    assert "step / request per round (3 rounds" in capsys.readouterr().out
