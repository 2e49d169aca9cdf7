"""loadtests/loop_cost.py end to end, briefly, on the tiny classifier: every variant at every
user count in every round, CPU per request read from /proc, a Markdown table of medians."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from loadtests.loop_cost import main


def test_loop_cost_compares_variants_round_by_round(
    copy_repository: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "points.json"
    argv = [
        "--repository", str(copy_repository("sentiment")), "--users", "1", "3",
        "--duration", "0.5", "--warmup", "0.2", "--rounds", "2", "--out", str(out),
        "--variant", "lane:fast_lane=true", "--variant", "route:fast_lane=false",
    ]  # fmt: skip
    assert main(argv) == 0
    points = json.loads(out.read_text())
    assert [(p["round"], p["variant"], p["users"]) for p in points] == [
        (r, v, u) for r in (1, 2) for v in ("lane", "route") for u in (1, 3)
    ]
    for p in points:
        assert p["requests"] > 0 and p["errors"] == 0 and p["req_per_s"] > 0
        assert p["p50_ms"] <= p["p95_ms"]
        # the loop's thread is part of the process: its share can only be smaller
        assert 0 < p["loop_cpu_ms_per_request"] <= p["process_cpu_ms_per_request"]
    table = capsys.readouterr().out
    assert "| lane | 3 | 2 |" in table and "| route | 1 | 2 |" in table


def test_loop_cost_speaks_the_open_inference_protocol(
    copy_repository: Callable[..., Path], tmp_path: Path
) -> None:
    """--protocol v2: the same loop on /v2/models/sentiment/infer, answered without errors."""
    out = tmp_path / "points.json"
    argv = [
        "--repository", str(copy_repository("sentiment")), "--users", "2", "--duration", "0.5",
        "--warmup", "0.2", "--rounds", "1", "--protocol", "v2", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    (point,) = json.loads(out.read_text())
    assert point["variant"] == "defaults" and point["requests"] > 0 and point["errors"] == 0
