"""`python -m model_src average`: one checkpoint whose weights are the mean of several.

    python -m model_src average --checkpoints runs/a runs/b runs/c --out runs/soup

A uniform "model soup" (Wortsman et al., 2022): fine-tuned runs that started from the same
pretrained encoder sit in one basin of the loss, and their average is often more accurate than
any of them, at no inference cost (the result is an ordinary checkpoint of the same shape, so
`evaluate`, `export` and the service take it unchanged).

The checkpoints must agree on everything but the weights: format, task, labels, architecture
(the encoder config or the translator's model config) and tokenizer file. Anything else is
refused with a message naming the first difference, not averaged into nonsense.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch

from model_src.common.checkpoint import (
    load_checkpoint_config,
    load_state_dict,
    save_state_checkpoint,
)

# Config keys that must be equal across the averaged checkpoints (where present).
MUST_MATCH = ("format", "task", "labels", "max_length", "encoder", "arch", "model")
# Tokenizer file names the project's checkpoints carry.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


class AverageError(ValueError):
    pass


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_compatible(directories: list[Path]) -> list[dict[str, Any]]:
    """Configs of `directories`, after checking they may be averaged."""
    if len(directories) < 2:
        raise AverageError("give at least two checkpoints to average")
    configs = [load_checkpoint_config(d) for d in directories]
    first, first_dir = configs[0], directories[0]
    for directory, config in zip(directories[1:], configs[1:], strict=True):
        for key in MUST_MATCH:
            if config.get(key) != first.get(key):
                raise AverageError(
                    f"{directory} and {first_dir} differ in {key!r}: "
                    f"{config.get(key)!r} vs {first.get(key)!r}"
                )
        for name in TOKENIZER_FILES:
            a, b = first_dir / name, directory / name
            if a.is_file() != b.is_file() or (a.is_file() and _digest(a) != _digest(b)):
                raise AverageError(f"{directory} and {first_dir} have different {name}")
    return configs


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean in float32 (cast back to each tensor's dtype); integer tensors (e.g.
    position ids) must be equal and are kept."""
    names = set(states[0])
    for state in states[1:]:
        if set(state) != names:
            missing = sorted(names ^ set(state))[:3]
            raise AverageError(f"the checkpoints hold different tensors (e.g. {missing})")
    averaged = {}
    for name, tensor in states[0].items():
        shapes = {tuple(s[name].shape) for s in states}
        if len(shapes) > 1:
            raise AverageError(f"tensor {name!r} has different shapes: {sorted(shapes)}")
        if tensor.is_floating_point():
            mean = torch.stack([s[name].float() for s in states]).mean(0)
            averaged[name] = mean.to(tensor.dtype).contiguous()
        else:
            if any(not torch.equal(s[name], tensor) for s in states[1:]):
                raise AverageError(f"integer tensor {name!r} differs between checkpoints")
            averaged[name] = tensor.contiguous()
    return averaged


def average_checkpoints(directories: list[Path], out: Path) -> dict[str, Any]:
    """Write the averaged checkpoint to `out`; returns its config."""
    configs = check_compatible(directories)
    averaged = average_state_dicts([load_state_dict(d) for d in directories])
    config = dict(configs[0])
    config["averaged_from"] = [
        {"checkpoint": str(d), "best": c.get("best")}
        for d, c in zip(directories, configs, strict=True)
    ]
    config.pop("best", None)  # the average was never evaluated during training
    tokenizers: dict[str, Path | str] = {
        name: directories[0] / name for name in TOKENIZER_FILES if (directories[0] / name).is_file()
    }
    save_state_checkpoint(out, averaged, config, files=tokenizers)
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints", type=Path, nargs="+", required=True, help="checkpoint directories"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the average")


def run(args: argparse.Namespace) -> int:
    if args.out.resolve() in {d.resolve() for d in args.checkpoints}:
        print(f"error: --out {args.out} is one of the checkpoints being averaged")
        return 2
    try:
        average_checkpoints(list(args.checkpoints), args.out)
    except (AverageError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    print(f"averaged {len(args.checkpoints)} checkpoints -> {args.out}")
    return 0
