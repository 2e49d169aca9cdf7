"""Translator checkpoint directories (the layout is in /work/notes/contracts.md):

DIR/config.json       {"format": "nlpserve-translator", "format_version": 1,
                       "arch": "transformer" | "gru-attention", "model": asdict(config),
                       "max_length": 128, "special_tokens": {"<pad>": 0, ...},
                       "tokenizer": {"file": "tokenizer.json", "joint": true, "type": "bpe"},
                       "generation": {...}, "best": {...}, "train_args": {...}}
DIR/model.safetensors state_dict (tied embedding/output matrices stored once per name)
DIR/tokenizer.json    the one joint source/target tokenizer (see tokenizer.py for why joint);
                      its post-processor appends <eos>, so encode(text).ids is the source input
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from model_src.common.checkpoint import load_checkpoint_config, load_state_dict, save_checkpoint
from model_src.common.model_card import write_translator_card
from model_src.translator.rnn import GRUAttention, GRUAttentionConfig
from model_src.translator.tokenizer import TOKENIZER_FILE, load_tokenizer, special_token_ids
from model_src.translator.transformer import Transformer
from model_src.translator.transformer_layers import TransformerConfig

Translator = Transformer | GRUAttention
FORMAT = "nlpserve-translator"
FORMAT_VERSION = 1
ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "transformer": (TransformerConfig, Transformer),
    "gru-attention": (GRUAttentionConfig, GRUAttention),
}


def build_model(arch: str, model_config: dict[str, Any]) -> Translator:
    """A freshly initialised model of the given architecture from its config dict."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown translator arch {arch!r}; expected one of {list(ARCHITECTURES)}")
    config_cls, model_cls = ARCHITECTURES[arch]
    model: Translator = model_cls(config_cls(**model_config))  # type: ignore[assignment]
    return model


def save_translator(
    out_dir: Path,
    model: nn.Module,
    arch: str,
    tokenizer: Tokenizer,
    max_length: int,
    extra: dict[str, Any] | None = None,
) -> None:
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "model": asdict(model.config),  # type: ignore[call-overload]
        "max_length": max_length,
        "special_tokens": special_token_ids(),
        "tokenizer": {"file": TOKENIZER_FILE, "joint": True, "type": "bpe"},
        **(extra or {}),
    }
    save_checkpoint(out_dir, model, config, files={TOKENIZER_FILE: tokenizer.to_str()})
    write_translator_card(Path(out_dir), config)


def load_translator(
    directory: Path, device: torch.device | str = "cpu"
) -> tuple[Translator, dict[str, Any], Tokenizer]:
    """(model in eval mode on device, config dict, the joint tokenizer)."""
    directory = Path(directory)
    config = load_checkpoint_config(directory)
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{directory}: not a translator checkpoint (format {config.get('format')!r})"
        )
    model = build_model(config["arch"], config["model"])
    model.load_state_dict(load_state_dict(directory))
    tokenizer = load_tokenizer(directory / config.get("tokenizer", {}).get("file", TOKENIZER_FILE))
    return model.to(device).eval(), config, tokenizer
