"""PyTorch side of the translator export: the encoder and decoder-step graphs, traced to ONNX.

The graphs' interface is defined in service/engines/generation.py (their consumer). The
encoder graph also computes every decoder layer's cross-attention keys/values, so the per-step
decoder only projects the new token and attends over caches: neither the source nor the
target prefix is ever recomputed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export import torchscript
from model_src.translator.transformer import Transformer
from service.engines.generation import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
)


class EncoderGraph(nn.Module):
    """src_ids -> memory_mask, cross_k, cross_v (the encoder plus the cross-attention K/V)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory, memory_mask = self.model.encode(src_ids)  # (B,S,D), (B,S)
        cross_k, cross_v = self.model.cross_kv(memory)  # (L,B,H,S,hd) each
        return memory_mask, cross_k, cross_v


class DecoderStepGraph(nn.Module):
    """One decoding step with the self-attention cache in and out (Transformer.decode_step);
    the self-attention mask lets rows with different cache lengths share a step."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        tokens: torch.Tensor,
        position: torch.Tensor,
        memory_mask: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        self_k: torch.Tensor,
        self_v: torch.Tensor,
        self_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode_step(
            tokens, position, memory_mask, cross_k, cross_v, self_k, self_v, self_mask
        )


def with_eager_attention(model: Transformer) -> Transformer:
    """The same Transformer rebuilt on the explicit matmul-softmax attention path."""
    eager = Transformer(dataclasses.replace(model.config, attention="eager"))
    eager.load_state_dict(model.state_dict())
    return eager.eval()


def export_graphs(model: Transformer, out_dir: Path) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx for `model` (a Transformer) into out_dir."""
    cfg = model.config
    L, H = cfg.n_decoder_layers, cfg.n_heads
    hd = cfg.d_model // H
    B, S, t = 2, 5, 3  # example sizes; every one of them is a dynamic axis in the graphs
    src = torch.full((B, S), cfg.eos_id, dtype=torch.long)
    src[1, -2:] = cfg.pad_id  # a padded row, so the mask path is traced
    encoder_path, decoder_path = out_dir / "encoder.onnx", out_dir / "decoder.onnx"
    torchscript.export(
        EncoderGraph(model),
        (src,),
        encoder_path,
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        {
            "src_ids": {0: "batch", 1: "src_len"},
            "memory_mask": {0: "batch", 1: "src_len"},
            "cross_k": {1: "batch", 3: "src_len"},
            "cross_v": {1: "batch", 3: "src_len"},
        },
    )
    with torch.no_grad():
        memory_mask, cross_k, cross_v = EncoderGraph(model)(src)
    step_args = (
        torch.full((B,), 5, dtype=torch.long),  # tokens
        torch.full((B,), t, dtype=torch.long),  # position
        memory_mask,
        cross_k,
        cross_v,
        torch.randn(L, B, H, t, hd),  # self_k: a non-empty past so its axis is traced as dynamic
        torch.randn(L, B, H, t, hd),
        torch.ones(B, t + 1, dtype=torch.bool),  # self_mask: every cached position visible
    )
    torchscript.export(
        DecoderStepGraph(model),
        step_args,
        decoder_path,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        {
            "tokens": {0: "batch"},
            "position": {0: "batch"},
            "memory_mask": {0: "batch", 1: "src_len"},
            "cross_k": {1: "batch", 3: "src_len"},
            "cross_v": {1: "batch", 3: "src_len"},
            "self_k": {1: "batch", 3: "past"},
            "self_v": {1: "batch", 3: "past"},
            "self_mask": {0: "batch", 1: "past_plus_one"},
            "logits": {0: "batch"},
            "new_self_k": {1: "batch", 3: "past_plus_one"},
            "new_self_v": {1: "batch", 3: "past_plus_one"},
        },
    )
    _set_metadata(
        decoder_path,
        {
            "pad_id": cfg.pad_id,
            "sos_id": cfg.sos_id,
            "eos_id": cfg.eos_id,
            "max_positions": cfg.max_positions,
            "num_layers": L,
            "num_heads": H,
            "head_dim": hd,
        },
    )
    return encoder_path, decoder_path


def _set_metadata(path: Path, values: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: str(v) for k, v in values.items()})
    onnx.save(model, str(path))
