"""PyTorch side of the translator export: the encoder and decoder-step graphs, traced to ONNX.

The graphs' interface is defined in service/engines/generation.py (their consumer). The
encoder graph also computes every decoder layer's cross-attention keys/values, so the per-step
decoder only projects the new token and attends over caches: neither the source nor the
target prefix is ever recomputed. The decoder comes in two kinds: group_query (self-attention
as ONNX Runtime's GroupQueryAttention over each row's own left-aligned cache, one cache input
and output per layer, written in place by the serving loop) and masked (plain ONNX attention
over the longest row's right-aligned cache behind `self_mask`); reports/translation-benchmark.md
(stop 29) measures them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export import torchscript
from model_src.translator.transformer import Transformer
from model_src.translator.transformer_layers import MultiHeadAttention
from service.engines.translator_graphs import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    GROUP_QUERY,
    MASKED,
    SELF_ATTENTION_KINDS,
    decoder_inputs,
    decoder_outputs,
)


class _ModelGraph(nn.Module):
    """A traced graph over one Transformer's modules."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model


class EncoderGraph(_ModelGraph):
    """src_ids -> memory_mask, cross_k, cross_v (the encoder plus the cross-attention K/V)."""

    def forward(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory, memory_mask = self.model.encode(src_ids)  # (B,S,D), (B,S)
        cross_k, cross_v = self.model.cross_kv(memory)  # (L,B,H,S,hd) each
        return memory_mask, cross_k, cross_v


class DecoderStepGraph(_ModelGraph):
    """One decoding step with the self-attention cache in and out (Transformer.decode_step);
    the self-attention mask lets rows with different cache lengths share a step."""

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


class _CachedSelfAttention(torch.autograd.Function):
    """One new position per row attending over its own cached positions: exported as ONNX
    Runtime's com.microsoft GroupQueryAttention (one key/value head per query head).

    Caches are left-aligned: row b's positions 0..lengths[b]-1 sit in its first lengths[b]
    columns, the new key/value is written at column lengths[b], and the kernel reads that row's
    lengths[b]+1 columns only, so the padding of rows shorter than the longest costs nothing.
    The returned caches are max(past columns, total) long. `forward` computes the same in torch,
    for the trace's shapes (the export's parity check compares the whole graph with PyTorch's
    own decoder)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,  # (B, 1, D)
        k: torch.Tensor,  # (B, 1, D)
        v: torch.Tensor,  # (B, 1, D)
        past_k: torch.Tensor,  # (B, H, P, hd)
        past_v: torch.Tensor,
        lengths: torch.Tensor,  # (B,) int32: cached positions per row
        total: torch.Tensor,  # () int32: max(lengths) + 1
        num_heads: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, _, D = q.shape
        H, hd = num_heads, D // num_heads
        P = past_k.shape[2]
        T = max(P, int(total))
        rows, at = torch.arange(B), lengths.long()
        present = []
        for past, new in ((past_k, k), (past_v, v)):
            cache = past.new_zeros(B, H, T, hd)
            cache[:, :, :P] = past
            cache[rows, :, at] = new.view(B, H, hd)
            present.append(cache)
        scores = q.view(B, H, 1, hd) @ present[0].transpose(-2, -1) / math.sqrt(hd)  # (B,H,1,T)
        visible = torch.arange(T)[None, :] <= lengths[:, None]  # (B, T)
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ present[1]  # (B, H, 1, hd)
        return out.transpose(1, 2).reshape(B, 1, D), present[0], present[1]

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, lengths, total, num_heads: int):
        out, present_k, present_v = g.op(
            "com.microsoft::GroupQueryAttention",
            q, k, v, past_k, past_v, lengths, total,
            num_heads_i=num_heads,
            kv_num_heads_i=num_heads,
            outputs=3,
        )  # fmt: skip
        # The exporter has no shape inference for a contrib op: the output is typed as the
        # query, the caches as the past (rank 4, sizes left to ONNX Runtime's own inference).
        out.setType(q.type())
        cache = past_k.type().with_sizes([None] * 4)
        present_k.setType(cache)
        present_v.setType(cache)
        return out, present_k, present_v


class GroupQueryDecoderStepGraph(_ModelGraph):
    """DecoderStepGraph with each layer's self-attention as GroupQueryAttention over left-aligned
    caches, and every cache an input or output of its own (service/engines/generation.py): the
    serving loop binds a layer's cache as both input and output, so the kernel writes the new
    position in place and no step copies a cache. `position` (a row's decoded positions) is its
    cache length, so rows at different steps share a run with no mask input and no attention
    over another row's padding."""

    def forward(
        self,
        tokens: torch.Tensor,
        position: torch.Tensor,
        memory_mask: torch.Tensor,
        *caches: torch.Tensor,  # cross_k_0.., cross_v_0.., self_k_0.., self_v_0.. (L each)
    ) -> tuple[torch.Tensor, ...]:
        L = self.model.config.n_decoder_layers
        cross_k, cross_v, self_k, self_v = (caches[i * L : (i + 1) * L] for i in range(4))
        lengths = position.to(torch.int32)
        total = (position.max() + 1).to(torch.int32)

        def attend(
            layer: int, attention: MultiHeadAttention, h: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            out, k, v = _CachedSelfAttention.apply(
                attention.q_proj(h), attention.k_proj(h), attention.v_proj(h),
                self_k[layer], self_v[layer], lengths, total, attention.n_heads,
            )  # fmt: skip
            return attention.out_proj(out), k, v

        logits, new_k, new_v = self.model.decode_step_layers(
            tokens, position, memory_mask, cross_k, cross_v, self_k, self_v, self_attend=attend
        )
        return (logits, *new_k, *new_v)


def self_attention_kind(model: Transformer, requested: str | None) -> str:
    """GROUP_QUERY when ONNX Runtime's CPU kernel takes the model's head size (a multiple of 8),
    else MASKED; `requested` forces one (GROUP_QUERY refused when the kernel cannot run it)."""
    head_dim = model.config.d_model // model.config.n_heads
    fits = head_dim % 8 == 0
    if requested is None:
        return GROUP_QUERY if fits else MASKED
    if requested not in SELF_ATTENTION_KINDS:
        raise ValueError(f"self attention {requested!r}: choose from {SELF_ATTENTION_KINDS}")
    if requested == GROUP_QUERY and not fits:
        raise ValueError(
            f"head size {head_dim}: GroupQueryAttention needs a multiple of 8; export masked"
        )
    return requested


def with_eager_attention(model: Transformer) -> Transformer:
    """The same Transformer rebuilt on the explicit matmul-softmax attention path."""
    eager = Transformer(dataclasses.replace(model.config, attention="eager"))
    eager.load_state_dict(model.state_dict())
    return eager.eval()


def export_graphs(model: Transformer, out_dir: Path, self_attention: str) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx for `model` (a Transformer) into out_dir; the decoder's
    self-attention is `self_attention` (GROUP_QUERY or MASKED, see self_attention_kind)."""
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
    step_args: tuple[torch.Tensor, ...] = (
        torch.full((B,), 5, dtype=torch.long),  # tokens
        torch.full((B,), t, dtype=torch.long),  # position
        memory_mask,
        cross_k,
        cross_v,
        torch.randn(L, B, H, t, hd),  # self_k: a non-empty past so its axis is traced as dynamic
        torch.randn(L, B, H, t, hd),
    )
    axes = {
        "tokens": {0: "batch"},
        "position": {0: "batch"},
        "memory_mask": {0: "batch", 1: "src_len"},
        "logits": {0: "batch"},
    }
    if self_attention == MASKED:
        step_graph: nn.Module = DecoderStepGraph(model)
        # self_mask: every cached position visible
        step_args = (*step_args, torch.ones(B, t + 1, dtype=torch.bool))
        axes |= {
            "cross_k": {1: "batch", 3: "src_len"},
            "cross_v": {1: "batch", 3: "src_len"},
            "self_k": {1: "batch", 3: "past"},
            "self_v": {1: "batch", 3: "past"},
            "self_mask": {0: "batch", 1: "past_plus_one"},
            "new_self_k": {1: "batch", 3: "present"},
            "new_self_v": {1: "batch", 3: "present"},
        }
    else:  # every cache one input (output) per layer: (B, H, columns, hd)
        step_graph = GroupQueryDecoderStepGraph(model)
        step_args = (*step_args[:3], *(c for stacked in step_args[3:] for c in stacked))
        for name in decoder_inputs(self_attention, L)[3:]:
            axes[name] = {0: "batch", 2: "src_len" if name.startswith("cross") else "past"}
        for name in decoder_outputs(self_attention, L)[1:]:
            axes[name] = {0: "batch", 2: "present"}
    torchscript.export(
        step_graph,
        step_args,
        decoder_path,
        decoder_inputs(self_attention, L),
        decoder_outputs(self_attention, L),
        axes,
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
            "self_attention": self_attention,
        },
    )
    return encoder_path, decoder_path


def _set_metadata(path: Path, values: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: str(v) for k, v in values.items()})
    onnx.save(model, str(path))
