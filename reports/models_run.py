"""Summarise one `make models` run: per training run its wall time, steps and best dev score,
per export its dev scores, and the dev curves as one PNG.

    python reports/models_run.py --runs RUNS --repository REPO \
        --json reports/models-run.json --png reports/models-run.png [--markdown FILE]

Reads only what the run wrote: each run directory's `train_log.txt` (first and last timestamp),
`config.json` (`best`), `metrics.jsonl` (dev records) and `.made` stamp (finish time, commit);
each exported version's `manifest.json` (`dev_metrics`, the int8 setting chosen). Nothing is
recomputed; --markdown writes the two tables reports/quality.md quotes.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after the backend is chosen

# The dev metric each kind of run is selected on (metrics.jsonl key).
DEV_METRIC = {"classifier": "accuracy", "nli": "accuracy", "translator": "bleu"}
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _log_times(log: Path) -> tuple[datetime, datetime] | None:
    """First and last timestamp of a train_log.txt (lines start `YYYY-MM-DD HH:MM:SS,mmm`)."""
    stamps = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            stamps.append(datetime.strptime(line[:19], LOG_TIME_FORMAT))
        except ValueError:
            continue
    return (stamps[0], stamps[-1]) if stamps else None


def _dev_points(metrics: Path, key: str) -> list[tuple[int, float]]:
    points = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("split") == "dev" and key in record:
            points.append((int(record["step"]), float(record[key])))
    return points


def _kind(config: dict[str, Any]) -> str:
    if "model" in config and "arch" in config:
        return "translator"
    return "nli" if config.get("task") == "text-pair-classification" else "classifier"


def summarise_run(directory: Path) -> dict[str, Any]:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    kind = _kind(config)
    summary: dict[str, Any] = {"run": directory.name, "kind": kind, "best": config.get("best")}
    stamp = directory / ".made"
    if stamp.is_file():
        finished, commit = [*stamp.read_text(encoding="utf-8").splitlines(), "", ""][:2]
        summary.update(finished=finished, commit=commit)
    log = directory / "train_log.txt"
    times = _log_times(log) if log.is_file() else None
    if times is not None:
        start, end = times
        summary.update(
            started=start.isoformat(), wall_minutes=round((end - start).total_seconds() / 60, 1)
        )
    metrics = directory / "metrics.jsonl"
    if metrics.is_file():
        summary["dev_curve"] = _dev_points(metrics, DEV_METRIC[kind])
        summary["steps"] = max((step for step, _ in summary["dev_curve"]), default=None)
    train_args = config.get("train_args") or config.get("training", {}).get("args")
    if train_args:
        summary["precision"] = (train_args.get("run") or {}).get("precision")
    return summary


def summarise_exports(repository: Path) -> list[dict[str, Any]]:
    exports = []
    for manifest in sorted(repository.glob("*/*/manifest.json")):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        exports.append(
            {
                "model": manifest.parent.parent.name,
                "version": manifest.parent.name,
                "precision": data.get("precision"),
                "quantization": (data.get("quantization") or {}).get("chosen"),
                "exported_at": data.get("exported_at"),
                "dev_metrics": data.get("dev_metrics"),
            }
        )
    return exports


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    kinds = [k for k in DEV_METRIC if any(r["kind"] == k and r.get("dev_curve") for r in runs)]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5 * max(len(kinds), 1), 4.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for axis, kind in zip(axes, kinds, strict=False):
        for run in runs:
            if run["kind"] == kind and run.get("dev_curve"):
                steps, scores = zip(*run["dev_curve"], strict=True)
                axis.plot(steps, scores, marker="o", markersize=3, label=run["run"])
        axis.set(title=f"{kind}: dev {DEV_METRIC[kind]}", xlabel="optimizer step")
        axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def markdown(summary: dict[str, Any]) -> str:
    """The run table (started, wall, steps, best dev) and the export table (dev scores)."""
    lines = [
        "| run | started (UTC) | wall min | steps | best at step | best dev (training) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for run in sorted(summary["runs"], key=lambda r: r.get("started") or ""):
        best = run.get("best") or {}
        if "dev_bleu" in best:
            score = f"BLEU {best['dev_bleu']} (beam {best.get('dev_beam', 1)})"
        elif "dev_accuracy" in best:
            score = f"accuracy {best['dev_accuracy']:.4f}"
        else:
            score = "-"
        started = (run.get("started") or "-").replace("T", " ")
        lines.append(
            f"| `{run['run']}` | {started} | {run.get('wall_minutes', '-')} "
            f"| {run.get('steps') or '-'} | {best.get('step', '-')} | {score} |"
        )
    lines += [
        "",
        "| model | version | precision | int8 setting | dev metrics |",
        "|---|---|---|---|---|",
    ]
    for export in summary["exports"]:
        dev = export.get("dev_metrics") or {}
        shown = ", ".join(
            f"{k} {dev[k]}"
            for k in ("accuracy", "macro_f1", "rows", "confusion_matrix")
            if k in dev
        )
        lines.append(
            f"| {export['model']} | {export['version']} | {export['precision']} "
            f"| {export.get('quantization') or '-'} | {shown or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the run directories' parent")
    parser.add_argument("--repository", type=Path, help="the model repository it exported to")
    parser.add_argument("--json", type=Path, required=True, help="summary to write")
    parser.add_argument("--png", type=Path, help="dev curves to draw")
    parser.add_argument("--markdown", type=Path, help="the run and export tables to write")
    args = parser.parse_args(argv)
    runs = [
        summarise_run(d)
        for d in sorted(args.runs.iterdir())
        if (d / "config.json").is_file() and d.name != "demo"
    ]
    summary = {
        "runs": runs,
        "exports": summarise_exports(args.repository) if args.repository else [],
    }
    args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if args.png:
        plot(runs, args.png)
    if args.markdown:
        args.markdown.write_text(markdown(summary), encoding="utf-8")
    for run in runs:
        best = run.get("best") or {}
        score = best.get("dev_accuracy", best.get("dev_bleu"))
        print(f"{run['run']:24} {run.get('wall_minutes', '-'):>6} min  best {score}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
