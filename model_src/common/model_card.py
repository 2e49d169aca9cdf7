"""Model cards: README.md with the Hugging Face Hub's metadata header, beside every fine-tuned
checkpoint and every exported model version.

Everything in a card comes from what the run recorded (config.json's train_args, best, training;
the export manifest's parity numbers); nothing is estimated. Plain text in, plain text out: no
torch, so export and tools can write cards too.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

HUB_METRICS = ("accuracy", "f1", "bleu", "chrf", "loss", "perplexity")
PIPELINE_TAG = "text-classification"  # the Hub files NLI models under text-classification too
TASK_TAGS = {
    "text-classification": ["bert", "text-classification", "sentiment-analysis"],
    "text-pair-classification": ["bert", "text-classification", "natural-language-inference"],
    "translation": ["translation", "seq2seq"],
    "pretraining": ["bert", "fill-mask", "domain-adaptive-pretraining"],
}
INTENDED_USE = {
    "translation": "Translating short English sentences (image-caption style, as in Multi30k) "
    "into German.",
    "pretraining": "A starting point (`--init`) for fine-tuning on English text of the domain it "
    "was further pretrained on; it classifies nothing by itself.",
    "text-classification": "Classifying single English sentences or short reviews by the "
    "labels listed above (trained for movie-review sentiment when the data is SST-2).",
    "text-pair-classification": "Deciding whether an English hypothesis is entailed by, neutral "
    "to, or contradicted by a premise (natural-language inference, SNLI-style captions).",
}
LIMITS = (
    "English input only (the translator: to German), with the vocabulary it was trained with. "
    "Inputs longer than "
    "max_length tokens are truncated. The metrics below are dev-set figures, measured on the "
    "data it was tuned on; expect less on other domains (product reviews, tweets, long texts). "
    "The demo models (`make demo`) are trained on a few hundred generated sample sentences and "
    "are for trying the pipeline, not for real use. Not evaluated for bias or fairness."
)


def _yaml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _header(
    name: str,
    task: str,
    datasets: list[str],
    metrics: dict[str, float],
    library: str,
    pipeline_tag: str = PIPELINE_TAG,
) -> str:
    """The Hub's YAML metadata block (JSON strings are valid YAML scalars)."""
    # Only quality metrics go into the model index; counts and timings stay in the body.
    metrics = {k: v for k, v in metrics.items() if k.split("_")[-1] in HUB_METRICS}
    lines = [
        "---",
        f"library_name: {library}",
        f"pipeline_tag: {pipeline_tag}",
        "language: [en]" if pipeline_tag != "translation" else "language: [en, de]",
        f"tags: {_yaml_list(['nlpserve', *TASK_TAGS.get(task, [task])])}",
    ]
    if datasets:
        lines.append(f"datasets: {_yaml_list(datasets)}")
    if metrics:
        lines += [
            f"metrics: {_yaml_list(sorted({m.split('_')[-1] for m in metrics}))}",
            "model-index:",
            f"- name: {json.dumps(name)}",
            "  results:",
            f"  - task: {{type: {pipeline_tag}}}",
            "    dataset: {name: dev, type: dev, split: dev}",
            "    metrics:",
        ]
        for metric, value in metrics.items():
            kind = metric.split("_")[-1]  # dev_accuracy -> accuracy, dev_bleu -> bleu
            lines.append(f"    - {{type: {kind}, name: {json.dumps(metric)}, value: {value}}}")
    lines.append("---")
    return "\n".join(lines)


def training_command(task: str, train_args: dict[str, Any]) -> str:
    """The `python -m model_src train` line that reproduces a run, from its recorded arguments."""
    command = ["python", "-m", "model_src", "train", "nli" if "pair" in task else "classifier"]
    command += ["--train", *[str(p) for p in train_args.get("train", [])]]
    flags = ("dev", "out", "init", "epochs", "batch_size", "lr", "max_length", "seed")
    for key in flags:
        if train_args.get(key) is not None:
            command += ["--" + key.replace("_", "-"), str(train_args[key])]
    if train_args.get("max_train_examples"):
        command += ["--max-train-examples", str(train_args["max_train_examples"])]
    if train_args.get("teachers"):
        command += ["--teacher", *[str(t) for t in train_args["teachers"]]]
    return shlex.join(command)


def _dev_metrics(config: dict[str, Any]) -> dict[str, float]:
    best = config.get("best") or {}
    return {
        key: round(float(best[key]), 4)
        for key in ("dev_accuracy", "dev_macro_f1")
        if isinstance(best.get(key), (int, float)) and best[key] >= 0
    }


def checkpoint_card(config: dict[str, Any], name: str = "nlpserve-classifier") -> str:
    """The card of a fine-tuned classifier/NLI checkpoint directory (its config.json dict)."""
    task = str(config.get("task", "text-classification"))
    args = config.get("train_args") or {}
    datasets = [Path(str(p)).name for p in args.get("train", [])]
    if args.get("dev"):
        datasets.append(Path(str(args["dev"])).name)
    metrics = _dev_metrics(config)
    training = config.get("training") or {}
    measured = (
        "\n".join(f"- {k}: {v} (step {config['best'].get('step')})" for k, v in metrics.items())
        or "- none recorded"
    )
    if training:
        measured += (
            f"\n- training: {training.get('steps')} optimizer steps in "
            f"{training.get('wall_seconds')} s on {training.get('device')} "
            f"(world size {training.get('world_size')})"
        )
    return f"""{_header(name, task, datasets, metrics, "transformers")}

# {name}

A BERT {task} model fine-tuned with nlpserve from `{config.get("init", "?")}`.
Labels: {", ".join(config.get("labels", []))}; max_length {config.get("max_length")} tokens.

This directory is both an nlpserve checkpoint (`python -m export ...`, `nlpserve serve --model`)
and a Hugging Face one (`AutoModelForSequenceClassification.from_pretrained`,
`AutoTokenizer.from_pretrained`). Its pooler is a scaled identity: nlpserve's classifier reads
the [CLS] vector directly.

## Training

```bash
{training_command(task, args) if args else "(not recorded)"}
```

## Metrics measured

{measured}

## Intended use

{INTENDED_USE.get(task, "See the labels above.")}

## Limits

{LIMITS}
"""


def exported_card(
    name: str, task: str, labels: list[str], checkpoint: dict[str, Any], manifest: dict[str, Any]
) -> str:
    """The card of an exported model version (ONNX), from its checkpoint and manifest fields."""
    args = checkpoint.get("train_args") or {}
    datasets = [Path(str(p)).name for p in args.get("train", [])]
    metrics = _dev_metrics(checkpoint)
    parity = "\n".join(
        f"- {check}: {json.dumps(numbers, default=str)}"
        for check, numbers in (manifest.get("parity") or {}).items()
    )
    trained = (
        f"```bash\n{training_command(task, args)}\n```"
        if args
        else f"Not trained by nlpserve: exported from `{checkpoint.get('source', '?')}`."
    )
    return f"""{_header(name, task, datasets, metrics, "onnx")}

# {name}

ONNX export ({manifest.get("precision", "fp32")}) of `{manifest.get("source_checkpoint")}` for
nlpserve (`python -m service --model-repository DIR`): task {task}, labels {", ".join(labels)},
max_length {checkpoint.get("max_length")} tokens.

## Training

{trained}

## Metrics measured

{chr(10).join(f"- {k}: {v}" for k, v in metrics.items()) or "- no dev metrics recorded"}

Export parity checks (max abs logit differences, label agreement):

{parity or "- none"}

## Intended use

{INTENDED_USE.get(task, "See the labels above.")}

## Limits

{LIMITS}
"""


def recorded_run_card(
    name: str,
    task: str,
    pipeline_tag: str,
    summary: str,
    record: dict[str, Any],
    metrics: dict[str, float],
    library: str = "nlpserve",
) -> str:
    """A card for the other trained or exported models (translator, pretraining): a summary,
    the run's recorded arguments, its measured metrics, and the common limits."""
    args = record.get("train_args") or record.get("args") or {}
    datasets = [
        Path(str(args[key])).name
        for key in ("train_src", "train_tgt", "corpus")
        if isinstance(args.get(key), str)
    ]
    measured = "\n".join(f"- {k}: {v}" for k, v in metrics.items()) or "- none recorded"
    command = "pretrain" if task == "pretraining" else "train translator"
    return f"""{_header(name, task, datasets, metrics, library, pipeline_tag)}

# {name}

{summary}

## Training

Recorded arguments of the run (`python -m model_src {command} ...`):

```json
{json.dumps(args, indent=2, default=str)}
```

## Metrics measured

{measured}

## Intended use

{INTENDED_USE.get(task, "See the summary above.")}

## Limits

{LIMITS}
"""


def numeric(values: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a metrics dict (a run's `best`, a parity report)."""
    return {
        k: round(float(v), 4)
        for k, v in (values or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def write_model_card(path: Path, text: str) -> Path:
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def write_translator_card(out_dir: Path, config: dict[str, Any]) -> Path:
    """README.md beside a translator checkpoint (its config.json dict)."""
    summary = f"A {config.get('arch')} English-German translator trained with nlpserve."
    card = recorded_run_card(
        "nlpserve-translator", "translation", "translation", summary, config,
        numeric(config.get("best")),
    )  # fmt: skip
    return write_model_card(out_dir / "README.md", card)


def write_pretraining_card(
    out_dir: Path, args: dict[str, Any], dev_metrics: dict[str, Any] | None
) -> Path:
    """README.md beside a continued-pretraining output (a BertForPreTraining directory)."""
    summary = (
        "BERT after continued MLM+NSP pretraining with nlpserve (loads as BertForPreTraining)."
    )
    card = recorded_run_card(
        "nlpserve-pretrained-bert", "pretraining", "fill-mask", summary, {"args": args},
        numeric(dev_metrics), library="transformers",
    )  # fmt: skip
    return write_model_card(out_dir / "README.md", card)
