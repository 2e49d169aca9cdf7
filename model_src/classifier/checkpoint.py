"""The classifier checkpoint: one directory of config.json, model.safetensors and tokenizer.json.

`save_classifier` writes it (from training, `average`, export's tiny fixtures), `load_classifier`
reads it (evaluation, distillation teachers, export, the PyTorch baseline server), and
`build_classifier` starts a run from it or from a pretrained BERT. config.json keys: format,
format_version, task (tasks.TASKS' checkpoint_task), labels, max_length, encoder (BertConfig),
classifier_dropout, and what the run adds (init, train_args, best, training); beside them the
Hugging Face keys (model_type, architectures, id2label, ...), so that `transformers` loads the
directory too (model_src.classifier.hf), and a model card in README.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from model_src.bert.heads import SequenceClassifier
from model_src.bert.hf_checkpoint import load_pretrained_bert, resolve_checkpoint_dir
from model_src.bert.model import BertConfig, BertModel
from model_src.bert.tokenization import load_tokenizer, save_tokenizer_files
from model_src.classifier.hf import (
    hf_classifier_config,
    hf_classifier_state,
    native_classifier_state,
)
from model_src.classifier.tasks import TASKS
from model_src.common.checkpoint import (
    load_checkpoint_config,
    load_state_dict,
    save_state_checkpoint,
)
from model_src.common.model_card import checkpoint_card, write_model_card

CHECKPOINT_FORMAT = "nlpserve-classifier"
# 2: weights under HF BertForSequenceClassification names, so the directory is also a Hugging Face
# one (classifier.hf); 1: our own parameter names. load_classifier reads both.
CHECKPOINT_FORMAT_VERSION = 2


def is_classifier_checkpoint(directory: Path) -> bool:
    """True for one of our fine-tuned checkpoints; False for an HF BERT directory."""
    try:
        return bool(load_checkpoint_config(directory).get("format") == CHECKPOINT_FORMAT)
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def load_classifier(
    directory: str | Path,
) -> tuple[SequenceClassifier, dict[str, Any], Tokenizer]:
    """(model in eval mode, config.json dict, tokenizer truncating to the trained max_length)."""
    directory = Path(directory)
    config = load_checkpoint_config(directory)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory}: not a {CHECKPOINT_FORMAT} checkpoint")
    encoder = BertModel(BertConfig.from_dict(config["encoder"]))
    model = SequenceClassifier(
        encoder, len(config["labels"]), dropout=config.get("classifier_dropout", 0.1)
    )
    state = native_classifier_state(load_state_dict(directory), encoder.config, str(directory))
    model.load_state_dict(state, strict=True)
    tokenizer = load_tokenizer(directory / "tokenizer.json", max_length=int(config["max_length"]))
    return model.eval(), config, tokenizer


def save_classifier(
    out_dir: Path,
    model: SequenceClassifier,
    tokenizer: Tokenizer,
    task: str,
    labels: Sequence[str],
    max_length: int,
    **extra: Any,
) -> None:
    """Write a classifier checkpoint; `extra` keys (init, train_args, best, ...) go into
    config.json as they are. `task` is a TASKS key ("classifier" or "nli")."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, not {task!r}")
    if len(labels) != model.classifier.out_features:
        raise ValueError(f"{len(labels)} label names for {model.classifier.out_features} outputs")
    # HF keys first, ours after: the directory also loads in transformers (classifier.hf).
    config = {
        **hf_classifier_config(model.encoder.config, list(labels), model.dropout.p),
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "task": TASKS[task].checkpoint_task,
        "labels": list(labels),
        "max_length": max_length,
        "encoder": asdict(model.encoder.config),
        "classifier_dropout": model.dropout.p,
        **extra,
    }
    save_state_checkpoint(out_dir, hf_classifier_state(model), config)
    # tokenizer.json without truncation/padding (config.json's max_length says where to cut),
    # plus vocab.txt and tokenizer_config.json for transformers' AutoTokenizer.
    save_tokenizer_files(tokenizer, out_dir, model_max_length=max_length)
    write_model_card(out_dir / "README.md", checkpoint_card(config))


def build_classifier(
    init: str | Path | None, num_labels: int, dropout: float | None = None
) -> tuple[SequenceClassifier, Path]:
    """A classifier to fine-tune and the resolved init dir.

    `init` is a pretrained BERT (HF layout: a fresh head on its encoder) or one of our own
    fine-tuned checkpoints (continued training: its encoder, and its head too when the label
    count matches, e.g. a second stage at a lower learning rate).
    A dropout override rebuilds the encoder with that rate (rates are fixed at construction).
    """
    init_dir = resolve_checkpoint_dir(init)
    head_state: dict[str, torch.Tensor] | None = None
    if is_classifier_checkpoint(init_dir):
        previous, _, _ = load_classifier(init_dir)
        encoder = previous.encoder
        if previous.classifier.out_features == num_labels:
            head_state = previous.classifier.state_dict()
    else:
        encoder = load_pretrained_bert(init_dir)
    head_dropout = 0.1
    if dropout is not None:
        config = replace(
            encoder.config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
        rebuilt = BertModel(config)
        rebuilt.load_state_dict(encoder.state_dict())
        encoder, head_dropout = rebuilt, dropout
    model = SequenceClassifier(encoder, num_labels, dropout=head_dropout)
    if head_state is not None:
        model.classifier.load_state_dict(head_state)
    return model.train(), init_dir
