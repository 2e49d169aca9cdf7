"""Model cards (MODEL_CARD.md) for a release bundle, written from what the bundle records.

Every number on a card comes from the model's release entry (its manifest and training record);
nothing is typed in by hand. What the records cannot hold (what the data is, its license, what the
model is for) comes from `DATASETS` and `TASKS` below, keyed by the training files' paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    license: str
    limits: str


# Recognised by a path component of the training files (../shared/data/<key>/...).
DATASETS: dict[str, Dataset] = {
    "sst2": Dataset(
        "SST-2 (Stanford Sentiment Treebank, binary; GLUE version)",
        "Socher et al., EMNLP 2013; Wang et al., GLUE 2018. Movie-review sentences and phrases, "
        "lowercased and PTB-tokenized.",
        "No explicit license from the dataset authors; GLUE redistributes it for research use.",
        "Movie-review English only; trained on lowercased, PTB-tokenized text.",
    ),
    "snli": Dataset(
        "SNLI 1.0 (Stanford Natural Language Inference), a 25,296-pair sample of its train split",
        "Bowman, Angeli, Potts and Manning, EMNLP 2015. Image-caption premises with "
        "crowd-written hypotheses.",
        "Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0).",
        "Short, literal image-caption English; trained on about 4.6% of SNLI's train split.",
    ),
    "mnli": Dataset(
        "MultiNLI 1.0, matched dev set (used as extra training data)",
        "Williams, Nangia and Bowman, NAACL 2018. Ten genres of written and spoken English.",
        "Mostly Open American National Corpus text (free to use, modify and share); the fiction "
        "genre is CC BY-SA 3.0, CC BY 3.0 or US public domain.",
        "Once trained on, MultiNLI matched dev is no longer a held-out test of this model.",
    ),
    "multi30k": Dataset(
        "Multi30k Task 1 (English-German image descriptions)",
        "Elliott, Frank, Sima'an and Specia, Workshop on Vision and Language 2016.",
        "No license file in the source repository; partly derived from Flickr30K, provided for "
        "non-commercial research and educational purposes.",
        "Short image-caption sentences (about 12 words); other domains translate worse.",
    ),
}

TASKS: dict[str, str] = {
    "text-classification": "Sentiment of one English text (labels: {labels}).",
    "text-pair-classification": (
        "Natural-language inference: whether a hypothesis follows from, is neutral to, or "
        "contradicts a premise (labels: {labels})."
    ),
    "translation": "Translation of English sentences into German.",
}

INTENDED_USE = (
    "Demonstration and evaluation of the nlpserve serving stack, and research on the tasks and "
    "datasets named here. Not evaluated for decisions about people, for languages other than "
    "English input, or for text far from the training domain."
)


def datasets_of(train_files: list[str]) -> list[Dataset]:
    """The known datasets among the training files, in order (unknown files are skipped)."""
    found: list[Dataset] = []
    for path in train_files:
        for key, dataset in DATASETS.items():
            if key in path.replace("\\", "/").split("/") and dataset not in found:
                found.append(dataset)
    return found


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"{value:.2f}"
    return "" if value is None else str(value).replace("|", "\\|")


def _scores_table(scores: list[dict[str, Any]]) -> list[str]:
    if not scores:
        return ["No dev scores were recorded with this version (exported without dev data)."]
    lines = ["| metric | value | data | rows | measured by |", "|---|---|---|---|---|"]
    for s in scores:
        cells = (s["metric"], s["value"], s.get("data"), s.get("rows"), s["measured_by"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _confusion(entry: dict[str, Any]) -> list[str]:
    metrics = entry.get("dev_metrics")
    if not metrics or "confusion_matrix" not in metrics:
        return []
    labels = metrics["labels"]
    lines = [
        "",
        "Confusion matrix of the exported graph on the dev data (rows gold, columns predicted):",
        "",
        "| gold \\ predicted | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(n) for n in row) + " |")
    return lines


def _best_of(best: dict[str, Any] | None) -> str:
    """' (best dev accuracy 0.8945)' for an averaged run's own record, '' if none."""
    if best and best.get("dev_accuracy") is not None:
        return f" (best dev accuracy {best['dev_accuracy']:.4f})"
    return ""


def render(name: str, entry: dict[str, Any]) -> str:
    """MODEL_CARD.md for model `name` from its release entry (see export.release)."""
    labels = ", ".join(entry.get("labels") or [])
    built = entry.get("built_by") or {}
    training = built.get("training") or {}
    train_files = [str(f) for f in entry.get("train_files", [])]
    datasets = datasets_of(train_files)
    git = built.get("git") or {}
    commit = git.get("commit") or "not recorded"
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    lines = [
        f"# {name} (version {entry['version']})",
        "",
        f"**Task:** {TASKS[entry['task']].format(labels=labels)}",
        "",
        f"**Files:** ONNX ({entry.get('precision', 'fp32')}), served by "
        f"`python -m service --model-repository <bundle>`; exported {entry.get('exported_at')}.",
        "",
        "## Data",
        "",
    ]
    if datasets:
        for d in datasets:
            lines += [f"- **{d.name}.** {d.description} License: {d.license}"]
    lines += [f"- Training files as recorded: {', '.join(train_files) or 'not recorded'}."]
    lines += ["", "## Metrics measured", "", *_scores_table(entry.get("dev_scores", []))]
    lines += _confusion(entry)
    lines += [
        "",
        "Dev sets were also used to choose checkpoints and recipes; no test split was available "
        "to confirm these numbers on (see reports/quality.md).",
        "",
        "## How it was built",
        "",
        f"- Git commit at export: `{commit}`",
        f"- Export command: `{built.get('export_command') or 'not recorded'}`",
        f"- Checkpoint: `{built.get('checkpoint') or 'not recorded'}`",
    ]
    if entry.get("export_card"):
        lines.append(f"- The export's own card (Hugging Face layout): `{entry['export_card']}`")
    averaged = training.get("averaged_from")
    if averaged:
        sources = ", ".join(f"`{a['checkpoint']}`{_best_of(a.get('best'))}" for a in averaged)
        lines.append(f"- Weights: the uniform average of {sources}")
    teachers = (training.get("train_args") or {}).get("teachers")
    if teachers:
        lines.append(f"- Distilled from the averaged predictions of {', '.join(teachers)}")
    if training.get("train_args"):
        args = ", ".join(f"{k}={v}" for k, v in sorted(training["train_args"].items()))
        whose = "of the first averaged run" if averaged else "as the checkpoint recorded them"
        lines.append(f"- Training arguments ({whose}): {args}")
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Limits", ""]
    lines += [f"- {d.limits}" for d in datasets]
    lines += [
        f"- Inputs longer than {entry.get('max_length')} tokens are truncated.",
        "- Quality was measured on the dev data above only; bias and robustness were not "
        "evaluated.",
    ]
    return "\n".join(lines) + "\n"
