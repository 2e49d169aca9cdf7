"""`python -m model_src shrink`: a shallower student initialised from a fine-tuned classifier.

    python -m model_src shrink --checkpoint runs/sentiment --layers 3 --out runs/sentiment-l3-init
    python -m model_src train classifier --init runs/sentiment-l3-init --teacher runs/sentiment \\
        --train ... --dev ... --out runs/sentiment-l3

Serving cost grows with depth: a 3-layer student of the 6-layer model runs about twice as fast.
Starting the student from alternate teacher layers (DistilBERT's recipe: Sanh et al., 2019) keeps
the embeddings, the head and half the layers' fine-tuned weights, so distillation from the
teacher (`--teacher`, model_src.classifier.distill) only has to repair the gaps, not learn from
scratch. The output is an ordinary fine-tuned checkpoint (fewer layers in its encoder config),
which `train --init` continues with its head, and which `evaluate` and `export` take unchanged.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from model_src.bert.heads import SequenceClassifier
from model_src.bert.model import BertModel
from model_src.classifier.checkpoint import (
    CHECKPOINT_FORMAT,
    is_classifier_checkpoint,
    load_classifier,
    save_classifier,
)
from model_src.classifier.tasks import task_of_checkpoint
from model_src.common.checkpoint import load_checkpoint_config

_LAYER_KEY = re.compile(r"^(encoder\.encoder\.layers\.)(\d+)(\..*)$")


def alternate_layers(depth: int, keep: int) -> list[int]:
    """`keep` of `depth` layer indices, evenly spaced and ending with the last layer (the one
    the head was fine-tuned on): 6 -> 3 keeps 1, 3, 5; 6 -> 4 keeps 1, 2, 4, 5."""
    if not 1 <= keep <= depth:
        raise ValueError(f"cannot keep {keep} of {depth} layers")
    return [math.ceil((i + 1) * depth / keep) - 1 for i in range(keep)]


def shrink_state(state: dict[str, torch.Tensor], layers: list[int]) -> dict[str, torch.Tensor]:
    """The state dict with only `layers` of the encoder, renumbered 0..len-1 in that order."""
    new_index = {old: new for new, old in enumerate(layers)}
    out = {}
    for name, tensor in state.items():
        match = _LAYER_KEY.match(name)
        if match is None:
            out[name] = tensor  # embeddings, head
        elif int(match.group(2)) in new_index:
            out[f"{match.group(1)}{new_index[int(match.group(2))]}{match.group(3)}"] = tensor
    return out


def shrink_checkpoint(checkpoint: Path, out: Path, layers: list[int] | int) -> dict[str, Any]:
    """Write the shallower checkpoint to `out`; `layers` is a count (alternate layers) or the
    teacher's layer indices to keep, in order. Returns its config. The teacher is read and the
    student written through the checkpoint module, so either weight-naming format works."""
    if not is_classifier_checkpoint(checkpoint):
        raise ValueError(f"{checkpoint}: not a fine-tuned classifier ({CHECKPOINT_FORMAT})")
    teacher, config, tokenizer = load_classifier(checkpoint)
    depth = teacher.encoder.config.num_hidden_layers
    kept = alternate_layers(depth, layers) if isinstance(layers, int) else list(layers)
    if not kept or any(not 0 <= i < depth for i in kept) or len(set(kept)) != len(kept):
        raise ValueError(f"layers {kept} are not distinct indices of a {depth}-layer encoder")
    encoder_config = replace(teacher.encoder.config, num_hidden_layers=len(kept))
    student = SequenceClassifier(
        BertModel(encoder_config), len(config["labels"]), dropout=teacher.dropout.p
    )
    student.load_state_dict(shrink_state(teacher.state_dict(), kept), strict=True)
    extra: dict[str, Any] = {k: config[k] for k in ("init", "train_args") if k in config}
    extra["shrunk_from"] = {
        "checkpoint": str(checkpoint),
        "layers": kept,
        "best": config.get("best"),
    }
    task = task_of_checkpoint(config["task"]).name
    # No "best": the student was not evaluated at this depth.
    save_classifier(out, student, tokenizer, task, config["labels"], config["max_length"], **extra)
    return load_checkpoint_config(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned classifier")
    parser.add_argument("--out", type=Path, required=True, help="where to write the student")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--layers", type=int, help="how many layers (alternate ones are kept)")
    which.add_argument(
        "--keep-layers", type=int, nargs="+", metavar="I", help="teacher layer indices to keep"
    )


def run(args: argparse.Namespace) -> int:
    if args.out.resolve() == args.checkpoint.resolve():
        print(f"error: --out {args.out} is the checkpoint itself")
        return 2
    try:
        config = shrink_checkpoint(args.checkpoint, args.out, args.keep_layers or args.layers)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    print(f"kept layers {config['shrunk_from']['layers']} of {args.checkpoint} -> {args.out}")
    return 0
