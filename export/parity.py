"""Parity checks between a reference (PyTorch or fp32 ONNX) and an exported graph.

A check returns a JSON-able dict of the numbers it measured; `require` turns a failed check into
a `ParityError` carrying those numbers, which the CLI prints before exiting non-zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from export.text_inputs import Batch, Text, encode, length_sorted_batches, varied_batches

LogitsFn = Callable[[Batch], np.ndarray]


class ParityError(RuntimeError):
    """An exported graph does not match its reference; `report` holds the measured numbers."""

    def __init__(self, what: str, report: dict[str, Any]) -> None:
        super().__init__(f"parity check failed: {what}: {report}")
        self.what = what
        self.report = report


def require(ok: bool, what: str, report: dict[str, Any]) -> None:
    if not ok:
        raise ParityError(what, report)


@dataclass
class ReferenceLogits:
    """Reference logits of fixed batches, computed once and compared against several graphs.

    Texts keep their given order and batch sizes cycle, so every batch mixes lengths and
    exercises padding.
    """

    batches: list[Batch]
    logits: list[np.ndarray]

    @classmethod
    def compute(
        cls,
        reference: LogitsFn,
        tokenizer: Tokenizer,
        texts: Sequence[Text],
        batch_sizes: Sequence[int] = (1, 3, 8, 16, 2, 5),
    ) -> ReferenceLogits:
        batches = [encode(tokenizer, chunk) for chunk in varied_batches(texts, batch_sizes)]
        return cls(batches, [reference(b) for b in batches])


def compare_logits(reference: ReferenceLogits, candidate: LogitsFn) -> dict[str, Any]:
    """Max abs logit difference and label agreement of `candidate` against the reference."""
    max_diff = 0.0
    agree = total = 0
    for batch, ref in zip(reference.batches, reference.logits, strict=True):
        cand = candidate(batch)
        max_diff = max(max_diff, float(np.abs(ref - cand).max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += len(ref)
    return {
        "max_abs_diff": max_diff,
        "label_agreement": agree / total,
        "texts": total,
        "batch_sizes": sorted({len(r) for r in reference.logits}),
        "max_tokens": max(b.input_ids.shape[1] for b in reference.batches),
    }


def predict(
    logits_fn: LogitsFn, tokenizer: Tokenizer, texts: Sequence[Text], batch_size: int = 32
) -> np.ndarray:
    """(N, num_labels) logits in text order (length-sorted batches for speed)."""
    out: np.ndarray | None = None
    for idx, chunk in length_sorted_batches(tokenizer, texts, batch_size):
        logits = logits_fn(encode(tokenizer, chunk))
        if out is None:
            out = np.empty((len(texts), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    assert out is not None, "no texts"  # callers always pass texts (dev files must have rows)
    return out


def label_metrics(
    reference: np.ndarray, candidate: np.ndarray, gold: Sequence[int] | None
) -> dict[str, Any]:
    """How a candidate's predictions compare with the reference's, from both (N, C) logits.

    Besides agreement (and, with gold labels, both accuracies) it reports how decisive the
    reference was where they disagree: flips only at near-ties (top-2 logit margin below the
    candidate's logit error) point at an undertrained model rather than a bad quantisation.
    """
    ref_labels, cand_labels = reference.argmax(-1), candidate.argmax(-1)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # (N,) reference top-1 minus top-2 logit
    flipped = ref_labels != cand_labels
    metrics: dict[str, Any] = {
        "texts": len(ref_labels),
        "label_agreement": float((~flipped).mean()),
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "median_reference_margin": float(np.median(margin)),
        "max_reference_margin_of_flips": float(margin[flipped].max()) if flipped.any() else None,
    }
    if gold is not None:
        gold_arr = np.asarray(gold)
        ref_acc = float((ref_labels == gold_arr).mean())
        cand_acc = float((cand_labels == gold_arr).mean())
        metrics.update(
            reference_accuracy=ref_acc,
            accuracy=cand_acc,
            accuracy_drop_points=100.0 * (ref_acc - cand_acc),
        )
    return metrics
