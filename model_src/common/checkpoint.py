"""Checkpoint directories: safetensors weights + a JSON config + any extra files beside them.

Every checkpoint the project writes (classifier, NLI, translator, pretraining) goes through here,
so `export/` reads one format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def jsonable(value: Any) -> Any:
    """Run arguments for a checkpoint's JSON: paths (alone or in lists/tuples) as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    return value


def _unshared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied embeddings); clone the repeats so each
    name owns its bytes. Loading copies into the tied parameter twice, which is harmless."""
    seen: set[tuple[int, int]] = set()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        state[name] = t.clone().contiguous() if key in seen else t.contiguous()
        seen.add(key)
    return state


def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    config: dict[str, Any],
    files: dict[str, Path | str] | None = None,
) -> None:
    """Write the model's weights (see `save_state_checkpoint`)."""
    save_state_checkpoint(out_dir, _unshared_state_dict(model), config, files)


def save_state_checkpoint(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    files: dict[str, Path | str] | None = None,
) -> None:
    """Write model.safetensors + config.json, and each extra file (name -> source path, or text).

    Weights are written to a temporary name first and renamed, so a crash never leaves a torn file
    where a good checkpoint used to be.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out_dir / WEIGHTS_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    for name, source in (files or {}).items():
        target = out_dir / name
        if isinstance(source, Path):
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
        else:
            target.write_text(source, encoding="utf-8")


def load_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; is {directory} a checkpoint directory?")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} in the checkpoint directory")
    return load_file(str(path))
