"""loadtests.decode_check's step-cost check: the numbers behind the translation report's cost
model, on the tiny exported translator."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.decode_check import _line, identity, main, step_cost
from service.engines.generation import OnnxGenerator
from service.engines.session import SessionSettings


def test_the_line_is_fixed_cost_plus_cost_per_row() -> None:
    assert _line([1, 2, 4], [1.5, 2.0, 3.0]) == (1.0, 0.5)


def test_step_cost_times_every_row_count_on_a_real_decoder(model_repository: Path) -> None:
    settings = SessionSettings(providers="cpu", intra_op_threads=1, allow_spinning=False)
    generator = OnnxGenerator.from_directory(model_repository / "translator" / "1", settings)
    report = step_cost(generator, (1, 4, 16), cache=4, source=5, repeats=3)
    assert [p["rows"] for p in report["points"]] == [1, 4, 16]
    assert all(p["step_ms"] > 0 for p in report["points"])
    assert all(p["ms_per_row"] == round(p["step_ms"] / p["rows"], 3) for p in report["points"])
    line = _line([p["rows"] for p in report["points"]], [p["step_ms"] for p in report["points"]])
    assert (report["fixed_ms"], report["row_ms"]) == line


def test_an_unknown_check_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["nonsense", "--version-dir", "x"])


@pytest.mark.parametrize("encode_ahead", [False, True])
def test_identity_finds_no_difference_with_the_encoder_inside_or_beside_the_step(
    model_repository: Path, encode_ahead: bool
) -> None:
    settings = SessionSettings(providers="cpu", intra_op_threads=1, allow_spinning=False)
    generator = OnnxGenerator.from_directory(model_repository / "translator" / "1", settings)
    sources = [[4 + (7 * i + j) % 150 for j in range(1 + i % 9)] + [2] for i in range(10)]
    report = identity(generator, sources, max_new_tokens=8, seed=1, encode_ahead=encode_ahead)
    assert report["encode_ahead"] is encode_ahead
    for search in ("greedy", "beam4", "mixed"):
        assert report[search]["differences"] == 0
        assert report[search]["max_rows"] > 1  # sentences really shared steps
