"""`python -m export bench --quick`: the whole engine benchmark on tiny models, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.__main__ import main


def test_quick_bench_measures_every_engine_and_writes_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every classifier engine and translator mode is timed, against a measured GEMM roofline."""
    # `main()` sets this for its own process; set it here so the test leaks no environment.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out = tmp_path / "bench.md"
    argv = ["bench", "--quick", "--out", str(out), "--batch-sizes", "1,2", "--seq-lens", "16"]
    assert main([*argv, "--min-time", "0.01", "--max-new-tokens", "3", "--threads", "1"]) == 0

    result = json.loads(out.with_suffix(".json").read_text())
    assert result["gemm"]["torch"] > 0 and result["gemm"]["ort"] > 0
    cells = result["classifier"]["cells"]
    engines = {"pytorch-eager", "ort-fp32", "ort-optimized", "ort-int8"}
    assert {c["engine"] for c in cells} == engines
    assert {(c["batch"], c["seq_len"]) for c in cells} == {(1, 16), (2, 16)}
    for c in cells:
        assert c["seq_per_s"] > 0 and c["p50_ms"] <= c["p99_ms"]
        assert 0 < c["roofline"] == pytest.approx(c["gflops"] / c["gemm_gflops"])

    modes = {(c["engine"], c["search"], c["cache"]) for c in result["translator"]["cells"]}
    assert modes == {
        (engine, search, cache)
        for engine in ("pytorch", "ort")
        for search in ("greedy", "beam4")
        for cache in (True, False)
    }
    assert all(c["tokens_per_s"] > 0 for c in result["translator"]["cells"])
    assert any("cached ORT greedy" in g["goal"] for g in result["goals"])

    report = out.read_text()
    assert "## fp32 GEMM ceiling" in report and "| ort-int8 | 2 | 16 |" in report
    assert "wrote" in capsys.readouterr().out
