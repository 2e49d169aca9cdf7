"""Export-side helpers for Hugging Face classifier directories (loading: model_src.classifier.hf).

The tokenizer that goes into the model version, and a parity check of our PyTorch loading of an
HF directory against `transformers` itself, run when `transformers` is installed (a development
extra; the check is then recorded in the manifest, otherwise its absence is).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from export.parity import ReferenceLogits, compare_logits, require
from export.text_inputs import Batch
from model_src.classifier.hf import HF_FORMAT

__all__ = ["HF_FORMAT", "check_against_transformers", "tokenizer_json"]

logger = logging.getLogger(__name__)


def tokenizer_json(checkpoint: Path, loaded: Tokenizer) -> str:
    """The checkpoint's tokenizer.json as it is, or (an HF directory with only vocab.txt) the
    tokenizer built from the vocabulary, with no truncation or padding baked in."""
    path = Path(checkpoint) / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    clean = Tokenizer.from_str(loaded.to_str())
    clean.no_truncation()
    clean.no_padding()
    return clean.to_str()


def check_against_transformers(
    checkpoint: Path, reference: ReferenceLogits, atol: float
) -> dict[str, Any]:
    """Max abs logit difference between our PyTorch model (`reference`) and transformers'
    AutoModelForSequenceClassification on the same token ids; raises ParityError past `atol`."""
    try:
        import transformers
    except ImportError:
        logger.info("transformers is not installed: skipping the check against it")
        return {"skipped": "transformers is not installed"}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        checkpoint, local_files_only=True
    ).eval()

    def logits(batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(batch.input_ids),
                attention_mask=torch.from_numpy(batch.attention_mask),
                token_type_ids=torch.from_numpy(batch.token_type_ids),
            )
        return np.asarray(out.logits.float().numpy())

    report = compare_logits(reference, logits)
    report.update(atol=atol, transformers_version=transformers.__version__)
    require(report["max_abs_diff"] <= atol, "our PyTorch model vs transformers", report)
    return report
