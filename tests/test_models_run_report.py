"""reports/models_run.py: the summary of a `make models` run that reports/quality.md quotes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from tests.conftest import PROJECT_ROOT


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "models_run", PROJECT_ROOT / "reports" / "models_run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_dir(root: Path, name: str, config: dict, dev: list[dict], log: list[str]) -> None:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "metrics.jsonl").write_text(
        "".join(json.dumps({"split": "dev", **r}) + "\n" for r in dev)
        + json.dumps({"split": "train", "step": 99, "loss": 1.0})
        + "\n"
    )
    (directory / "train_log.txt").write_text("\n".join(log) + "\n")
    (directory / ".made").write_text("2026-12-01T16:00:00Z\nabc123\n")


def test_wall_time_best_score_curve_and_exports_come_from_the_run_files(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run_dir(
        runs,
        "nli-stage1",
        {
            "task": "text-pair-classification",
            "best": {"step": 20, "dev_accuracy": 0.8},
            "train_args": {"run": {"precision": "auto"}},
        },
        [{"step": 10, "accuracy": 0.7}, {"step": 20, "accuracy": 0.8}],
        [
            "2026-12-01 15:00:00,001 INFO start",
            "  a progress line without a time",
            "2026-12-01 15:42:30,500 INFO done",
        ],
    )
    _run_dir(
        runs,
        "translator",
        {"arch": "transformer", "model": {}, "best": {"step": 5, "dev_bleu": 30.5}},
        [{"step": 5, "bleu": 30.5, "loss": 3.0}],
        ["2026-12-01 15:00:00,000 INFO start", "2026-12-01 15:06:00,000 INFO done"],
    )
    version = tmp_path / "repo" / "nli" / "1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(
        json.dumps(
            {
                "precision": "int8",
                "quantization": {"chosen": "static-entropy"},
                "dev_metrics": {"accuracy": 0.81},
            }
        )
    )
    out = tmp_path / "summary.json"
    png = tmp_path / "curves.png"
    tables = tmp_path / "tables.md"
    args = ["--runs", str(runs), "--repository", str(tmp_path / "repo")]
    assert (
        _tool().main([*args, "--json", str(out), "--png", str(png), "--markdown", str(tables)]) == 0
    )

    summary = json.loads(out.read_text())
    nli, translator = summary["runs"]
    assert (nli["kind"], nli["wall_minutes"], nli["steps"]) == ("nli", 42.5, 20)
    assert nli["dev_curve"] == [[10, 0.7], [20, 0.8]]
    assert (nli["precision"], nli["finished"], nli["commit"]) == (
        "auto",
        "2026-12-01T16:00:00Z",
        "abc123",
    )
    assert (translator["kind"], translator["wall_minutes"]) == ("translator", 6.0)
    assert translator["dev_curve"] == [[5, 30.5]]
    assert summary["exports"] == [
        {
            "model": "nli",
            "version": "1",
            "precision": "int8",
            "quantization": "static-entropy",
            "exported_at": None,
            "dev_metrics": {"accuracy": 0.81},
        }
    ]
    assert png.stat().st_size > 1000
    rows = tables.read_text().splitlines()
    assert "| `nli-stage1` | 2026-12-01 15:00:00 | 42.5 | 20 | 20 | accuracy 0.8000 |" in rows
    assert "| `translator` | 2026-12-01 15:00:00 | 6.0 | 5 | 5 | BLEU 30.5 (beam 1) |" in rows
    assert "| nli | 1 | int8 | static-entropy | accuracy 0.81 |" in rows
