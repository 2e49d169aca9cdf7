"""How an exported version was made, for its manifest (and from there the release bundle).

`record` gathers what the export can know for sure: the project's git commit (and whether the
checkout had uncommitted changes), the command line of the export process, and what the
training run wrote into the checkpoint's config.json (its arguments, best dev scores, totals,
the checkpoint it started from, the runs it averages). The training command line itself is not
in the checkpoint; its recorded arguments are.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Keys of a checkpoint's config.json that say how it was trained (finetune, average, translator).
TRAINING_KEYS = ("train_args", "best", "training", "init", "averaged_from", "optimizer", "data")


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None}: None when root is not a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def process_command(argv: list[str] | None = None) -> str:
    """This process's command line, with `python -m export` for the module's entry file."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name == "__main__.py":
        argv[0] = f"python -m {Path(argv[0]).parent.name}"
        return " ".join([argv[0], shlex.join(argv[1:])]).strip()
    return shlex.join(argv)


def record(checkpoint: Path, checkpoint_config: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `provenance` entry for a version exported from `checkpoint`."""
    return {
        "git": git_state(),
        "export_command": process_command(),
        "checkpoint": {
            "path": str(Path(checkpoint).resolve()),
            **{k: checkpoint_config[k] for k in TRAINING_KEYS if k in checkpoint_config},
        },
    }


def classification_scores(
    logits: np.ndarray, gold: list[int], labels: list[str], data: str
) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion matrix (rows gold, columns predicted) of (N, C) logits."""
    predicted = logits.argmax(-1)
    gold_arr = np.asarray(gold)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (gold_arr, predicted), 1)
    f1 = []
    for k in range(n):
        tp = confusion[k, k]
        denominator = confusion[k, :].sum() + confusion[:, k].sum()
        f1.append(2 * tp / denominator if denominator else 0.0)
    return {
        "data": data,
        "rows": len(gold),
        "accuracy": round(float((predicted == gold_arr).mean()), 4),
        "macro_f1": round(float(np.mean(f1)), 4),
        "labels": list(labels),
        "confusion_matrix": confusion.tolist(),
    }
