"""Classifier evaluation: accuracy, macro-F1 and the confusion matrix.

`python -m model_src evaluate --checkpoint DIR --data FILE [--batch-size N] [--out JSON]` reads a
labelled file with the same readers as training (the label names come from the checkpoint), runs
the model and prints the metrics and a readable confusion matrix; --out writes them as JSON.

The metric functions here are plain Python over a confusion matrix, shared with the training
loop's dev evaluation (which sums the matrix over data-parallel ranks first).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_src.classifier.checkpoint import load_classifier
from model_src.classifier.data import DataError, ReaderConfig, read_labelled
from model_src.classifier.dataset import Collator, EncodedDataset
from model_src.classifier.tasks import task_of_checkpoint
from model_src.common.batching import chunked
from model_src.common.options import add_options, from_args
from model_src.common.training import DistContext, all_reduce_sum, autocast, pick_device

log = logging.getLogger(__name__)

# --- metrics --------------------------------------------------------------------------------


def confusion_matrix(
    gold: Sequence[int], predicted: Sequence[int], num_labels: int
) -> list[list[int]]:
    """matrix[g][p] = how many examples of gold label g were predicted as p."""
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for g, p in zip(gold, predicted, strict=True):
        matrix[g][p] += 1
    return matrix


def metrics_from_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 (unweighted mean of per-label F1; a label never gold nor predicted
    scores F1 = 0, as in scikit-learn with zero_division=0) and per-label precision/recall/F1."""
    n = len(labels)
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(n))
    per_label: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(matrix[g][i] for g in range(n))
        gold = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[name] = {"precision": precision, "recall": recall, "f1": f1, "support": gold}
    return {
        "examples": total,
        "accuracy": correct / total if total else 0.0,
        "macro_f1": sum(v["f1"] for v in per_label.values()) / n if n else 0.0,
        "per_label": per_label,
        "labels": list(labels),
        "confusion_matrix": [list(row) for row in matrix],
    }


def format_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """A text table: rows are gold labels, columns predictions."""
    width = max(8, *(len(name) for name in labels), *(len(str(v)) for row in matrix for v in row))
    head = "gold \\ predicted".ljust(width + 2) + "".join(name.rjust(width + 2) for name in labels)
    rows = [
        name.ljust(width + 2) + "".join(str(v).rjust(width + 2) for v in row)
        for name, row in zip(labels, matrix, strict=True)
    ]
    return "\n".join([head, *rows])


# --- running a model over a dataset ------------------------------------------------------------


def iter_logits(
    model: nn.Module,
    dataset: EncodedDataset,
    indices: Iterable[int],
    batch_size: int,
    device: torch.device,
    pad_id: int = 0,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(dataset indices, fp32 logits (B, num_labels), gold labels (B,)) batch by batch, for the
    given indices in length order (fewer pad tokens, same results). The caller sets eval mode
    and no-grad."""
    ordered = sorted(indices, key=lambda i: len(dataset.input_ids[i]))
    collate = Collator(pad_id)
    for batch_indices in chunked(ordered, batch_size):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in batch_indices]).items()}
        with autocast(device):
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        yield batch_indices, out.logits.float(), batch["labels"]


@torch.no_grad()
def evaluate_dataset(
    model: nn.Module,
    dataset: EncodedDataset,
    labels: Sequence[str],
    batch_size: int,
    device: torch.device,
    ctx: DistContext | None = None,
    pad_id: int = 0,
) -> dict[str, Any]:
    """Metrics of `model` (a SequenceClassifier, unwrapped from DDP) on `dataset`.

    Under data parallelism each rank scores its own share (rank::world_size, no padding) and the
    confusion matrix and loss are summed over ranks, so every rank returns the exact full-set
    metrics. The batches are length-sorted: fewer pad tokens, same results.
    """
    was_training = model.training
    model.eval()
    n = len(labels)
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    matrix = [[0] * n for _ in range(n)]
    loss_sum = 0.0
    share = range(rank, len(dataset), world)
    for _, logits, gold in iter_logits(model, dataset, share, batch_size, device, pad_id):
        loss_sum += float(F.cross_entropy(logits, gold, reduction="sum"))
        for g, p in zip(gold.tolist(), logits.argmax(-1).tolist(), strict=True):
            matrix[g][p] += 1
    if ctx is not None and ctx.is_distributed:
        summed = all_reduce_sum([float(v) for row in matrix for v in row] + [loss_sum], ctx)
        matrix = [[round(summed[g * n + p]) for p in range(n)] for g in range(n)]
        loss_sum = summed[-1]
    model.train(was_training)
    result = metrics_from_confusion(matrix, labels)
    result["loss"] = loss_sum / max(1, result["examples"])
    return result


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint dir")
    parser.add_argument("--data", type=Path, required=True, help="labelled TSV/CSV/JSONL(.gz)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    add_options(parser, ReaderConfig, skip=("labels",))  # the labels are the checkpoint's


def run(args: argparse.Namespace) -> int:
    try:
        model, config, tokenizer = load_classifier(args.checkpoint)
        labels = list(config["labels"])
        task = task_of_checkpoint(config["task"]).name
        reader = from_args(ReaderConfig, args, task=task, labels=tuple(labels))
        data = read_labelled(args.data, reader)
        device = pick_device(args.device)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to(device)
    started = time.monotonic()
    dataset = EncodedDataset(data.examples, tokenizer, int(config["max_length"]))
    result = evaluate_dataset(
        model, dataset, labels, args.batch_size, device, pad_id=model.encoder.config.pad_token_id
    )
    result.update(
        checkpoint=str(args.checkpoint),
        data=str(args.data),
        bad_rows=len(data.bad_rows),
        seconds=round(time.monotonic() - started, 2),
    )
    print(f"{args.data}: {result['examples']} examples ({len(data.bad_rows)} bad rows skipped)")
    print(f"accuracy  {result['accuracy']:.4f}")
    print(f"macro-F1  {result['macro_f1']:.4f}")
    for name, values in result["per_label"].items():
        print(
            f"  {name:<14} precision {values['precision']:.4f}  recall {values['recall']:.4f}"
            f"  F1 {values['f1']:.4f}  support {values['support']}"
        )
    print("confusion matrix (rows: gold, columns: predicted)")
    print(format_confusion(result["confusion_matrix"], labels))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
