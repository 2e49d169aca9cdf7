"""Sequence classifiers <-> Hugging Face `BertForSequenceClassification` directories.

In: `load_hf_classifier` reads a fine-tuned HF BERT-family sequence-classification directory
(config.json with id2label, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt)
into a `PooledClassifier`, which is HF's head on our encoder: [CLS] -> dense -> tanh (the pooler)
-> dropout -> linear. What loads: architecture `BertForSequenceClassification` with model_type
"bert" and absolute positions, i.e. every checkpoint whose weights map through
`bert.hf_checkpoint`'s BERT name map (BERT, MiniLM, TinyBERT, BioBERT, a Korean BERT, ...). Anything
else (RoBERTa, DistilBERT, ELECTRA, DeBERTa, ...) is refused with its architecture named: their
embeddings or heads differ, so the name map would load them silently wrong.

Out: our fine-tuned `SequenceClassifier` reads [CLS] directly, without a pooler, while HF's
BERT classifier always applies one. `hf_classifier_state` writes its pooler as a scaled identity
(weight s*I, bias 0) and divides the classifier weight by s: tanh(s*x) = s*x to within
(s*x)^2/3 relative, below float32 resolution for s = 2**-17 and any hidden value under ~100, so
`AutoModelForSequenceClassification.from_pretrained` gives the same logits. s is a power of two,
so dividing and multiplying back is exact and `native_classifier_state` restores the weights
bit for bit. Fine-tuning such a directory further in `transformers` works but starts with a
nearly linear pooler.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from model_src.bert.heads import ClassifierOutput, SequenceClassifier
from model_src.bert.hf_checkpoint import (
    _encoder_name_map,
    encoder_state_from_hf,
    load_bert_config,
    load_hf_state_dict,
)
from model_src.bert.model import BertConfig, BertModel
from model_src.bert.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURE = "BertForSequenceClassification"
HF_FORMAT = "huggingface"  # the "format" our loaders report for an HF directory
POOLER_SCALE = 2.0**-17  # see the module docstring: small enough that tanh is linear in fp32
# tokenizer_config.json writes this sentinel (int(1e30)) when a tokenizer has no length limit.
NO_LIMIT = 10**9


class PooledClassifier(nn.Module):
    """HF BertForSequenceClassification on our encoder: pooled [CLS] -> dropout -> linear."""

    def __init__(self, encoder: BertModel, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.pooler = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, H): BERT's pooler on [CLS]
        return ClassifierOutput(logits=self.classifier(self.dropout(pooled)))  # (B, num_labels)


# --- In -----------------------------------------------------------------------------------------


def is_hf_directory(directory: Path) -> bool:
    """True when config.json is a Hugging Face one (model_type/architectures, not our format)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return "format" not in config and ("model_type" in config or "architectures" in config)


def check_architecture(directory: Path, hf_config: dict[str, Any]) -> None:
    """Refuse, naming it, any architecture whose weights do not map through the BERT name map."""
    architectures = hf_config.get("architectures") or []
    model_type = hf_config.get("model_type")
    what = f"architecture {', '.join(architectures) or 'unknown'} (model_type {model_type!r})"
    supported = (
        f"nlpserve loads {SUPPORTED_ARCHITECTURE} checkpoints (model_type 'bert', absolute "
        "positions: a BERT encoder, its tanh pooler and a linear classifier) and its own "
        "fine-tuned checkpoints"
    )
    if model_type != "bert" or architectures != [SUPPORTED_ARCHITECTURE]:
        raise ValueError(f"{directory}: {what} cannot be exported; {supported}")
    if hf_config.get("problem_type") == "multi_label_classification":
        raise ValueError(
            f"{directory}: a multi-label classifier (sigmoid per label) cannot be exported; "
            "nlpserve serves single-label models (softmax over the labels)"
        )
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{directory}: position_embedding_type {hf_config['position_embedding_type']!r} "
            f"cannot be exported; {supported}"
        )


def hf_labels(directory: Path, hf_config: dict[str, Any]) -> list[str]:
    """Label names in output order, from config.json's id2label."""
    id2label = hf_config.get("id2label")
    if not id2label:
        raise ValueError(f"{directory}: config.json has no id2label; cannot name the outputs")
    ids = sorted(int(i) for i in id2label)
    if ids != list(range(len(ids))):
        raise ValueError(f"{directory}: id2label keys {ids} are not 0..{len(ids) - 1}")
    return [str(id2label[str(i)]) for i in ids]  # JSON object keys are strings


def hf_max_length(directory: Path, hf_config: dict[str, Any]) -> int:
    """The longest input in tokens: the position table, or less if tokenizer_config says so."""
    limit = int(hf_config.get("max_position_embeddings", 512))
    tokenizer_config = Path(directory) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(declared, (int, float)) and 0 < declared < NO_LIMIT:
            limit = min(limit, int(declared))
    return limit


def load_hf_classifier(
    directory: str | Path, task: str = "text-classification"
) -> tuple[PooledClassifier, dict[str, Any], Tokenizer]:
    """(model in eval mode, a checkpoint-like config, tokenizer) from an HF classifier directory.

    `task` ("text-classification" or "text-pair-classification") is the caller's: an HF config
    does not say whether its inputs are single texts or pairs.
    """
    directory = Path(directory)
    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    check_architecture(directory, hf_config)
    labels = hf_labels(directory, hf_config)
    max_length = hf_max_length(directory, hf_config)
    encoder_config = load_bert_config(directory)
    hf_state = load_hf_state_dict(directory)
    encoder_state, _ = encoder_state_from_hf(hf_state, encoder_config, source=str(directory))
    head = {
        "pooler.weight": "bert.pooler.dense.weight",
        "pooler.bias": "bert.pooler.dense.bias",
        "classifier.weight": "classifier.weight",
        "classifier.bias": "classifier.bias",
    }
    missing = [hf for hf in head.values() if hf not in hf_state]
    if missing:
        raise ValueError(f"{directory}: no {', '.join(missing)}; not a fine-tuned classifier")
    num_labels = hf_state["classifier.weight"].shape[0]
    if num_labels != len(labels):
        raise ValueError(f"{directory}: id2label has {len(labels)} labels, the head {num_labels}")
    dropout = hf_config.get("classifier_dropout")
    model = PooledClassifier(
        BertModel(encoder_config),
        num_labels,
        dropout=float(dropout if dropout is not None else encoder_config.hidden_dropout_prob),
    )
    state = {"encoder." + k: v for k, v in encoder_state.items()}
    state.update({ours: hf_state[hf] for ours, hf in head.items()})
    model.load_state_dict(state, strict=True)
    config = {
        "format": HF_FORMAT,
        "architecture": SUPPORTED_ARCHITECTURE,
        "task": task,
        "labels": labels,
        "max_length": max_length,
        "encoder": asdict(encoder_config),
        "source": str(directory.resolve()),
    }
    return model.eval(), config, load_tokenizer(directory, max_length=max_length)


# --- Out ----------------------------------------------------------------------------------------


def hf_classifier_config(
    encoder_config: BertConfig, labels: list[str], classifier_dropout: float
) -> dict[str, Any]:
    """The HF keys a classifier checkpoint's config.json carries beside our own."""
    return {
        **encoder_config.to_hf_config(),
        "architectures": [SUPPORTED_ARCHITECTURE],
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification",
        "classifier_dropout": classifier_dropout,
    }


def hf_classifier_state(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    """The classifier's weights under HF BertForSequenceClassification names (module docstring)."""
    encoder_state = model.encoder.state_dict()
    state = {
        "bert." + hf: encoder_state[ours]
        for ours, hf in _encoder_name_map(model.encoder.config).items()
    }
    hidden = model.encoder.config.hidden_size
    weight = model.classifier.weight.detach()
    state["bert.pooler.dense.weight"] = torch.eye(hidden, dtype=weight.dtype) * POOLER_SCALE
    state["bert.pooler.dense.bias"] = torch.zeros(hidden, dtype=weight.dtype)
    state["classifier.weight"] = weight / POOLER_SCALE
    state["classifier.bias"] = model.classifier.bias.detach()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def native_classifier_state(
    state: dict[str, torch.Tensor], encoder_config: BertConfig, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """`SequenceClassifier` weights from a checkpoint's tensors, HF-named or (older) our own."""
    if "bert.pooler.dense.weight" not in state:
        return state  # written before checkpoints were HF directories: our names already
    pooler = state["bert.pooler.dense.weight"]
    identity = torch.eye(pooler.shape[0], dtype=pooler.dtype) * POOLER_SCALE
    if not torch.equal(pooler, identity) or bool(state["bert.pooler.dense.bias"].any()):
        raise ValueError(
            f"{source}: its pooler is not the scaled identity nlpserve writes (was it fine-tuned "
            "in transformers?); export it as a Hugging Face checkpoint instead"
        )
    encoder_state, _ = encoder_state_from_hf(state, encoder_config, source=source)
    native = {"encoder." + k: v for k, v in encoder_state.items()}
    native["classifier.weight"] = state["classifier.weight"] * POOLER_SCALE
    native["classifier.bias"] = state["classifier.bias"]
    return native
