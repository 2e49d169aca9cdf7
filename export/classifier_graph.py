"""PyTorch side of the classifier/NLI export: load, pin eager attention, trace to ONNX.

The TorchScript exporter (`dynamo=False`, opset 17) with the eager matmul-softmax attention is
the combination for which ONNX Runtime's optimizer fuses Attention; the dynamo exporter and SDPA
both defeat it (../shared/reference/measurements.md).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from export import torchscript
from export.text_inputs import Batch
from export.torchscript import EXPORTER, OPSET
from model_src.bert.model import BertModel
from model_src.classifier.checkpoint import load_classifier as load_checkpoint
from model_src.classifier.hf import is_hf_directory, load_hf_classifier

__all__ = ["EXPORTER", "OPSET", "export_onnx", "load_classifier", "torch_logits"]

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def load_classifier(
    checkpoint_dir: Path, task: str = "text-classification"
) -> tuple[nn.Module, dict[str, Any], Tokenizer]:
    """The fine-tuned classifier (model, checkpoint config, tokenizer), in eval mode.

    A Hugging Face BertForSequenceClassification directory loads too (model_src.classifier.hf);
    `task` says whether its inputs are single texts or pairs (its config does not).
    """
    if not (Path(checkpoint_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: not a checkpoint directory (no config.json)")
    if is_hf_directory(checkpoint_dir):
        return load_hf_classifier(checkpoint_dir, task)
    model, config, tokenizer = load_checkpoint(checkpoint_dir)
    return model.eval(), config, tokenizer


def with_eager_attention(model: nn.Module) -> nn.Module:
    """The same classifier rebuilt on the explicit matmul-softmax attention path (same weights).

    Rebuilt rather than patched: the attention path is fixed at construction, and a fresh module
    from a replaced config is what the BERT owner documents as the way to switch it.
    """
    encoder = cast(BertModel, model.encoder)
    encoder_config = dataclasses.replace(encoder.config, attn_implementation="eager")
    eager = copy.deepcopy(model)  # a SequenceClassifier or an HF-style PooledClassifier
    eager.encoder = BertModel(encoder_config)
    eager.load_state_dict(model.state_dict())
    return eager.eval()


class LogitsOnly(nn.Module):
    """Positional (input_ids, attention_mask, token_type_ids) -> logits, as the graph exposes."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.classifier(input_ids, attention_mask, token_type_ids).logits


def export_onnx(model: nn.Module, path: Path, example: Batch, opset: int = OPSET) -> None:
    """Trace `model` (a SequenceClassifier) to `path` with dynamic batch/sequence axes; check it."""
    args = tuple(
        torch.from_numpy(a)
        for a in (example.input_ids, example.attention_mask, example.token_type_ids)
    )
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic["logits"] = {0: "batch"}
    torchscript.export(LogitsOnly(model), args, path, INPUT_NAMES, ["logits"], dynamic, opset)
    model.eval()


def torch_logits(model: nn.Module, batch: Batch) -> np.ndarray:
    with torch.inference_mode():
        out = model(
            torch.from_numpy(batch.input_ids),
            torch.from_numpy(batch.attention_mask),
            torch.from_numpy(batch.token_type_ids),
        )
    return out.logits.float().numpy()
