"""The Transformer encoder-decoder ("Attention Is All You Need"), written to be read like the paper.

    x   = Embed(tokens) * sqrt(d_model) + PE(position)            (sinusoidal, not learned)
    enc = N x [self-attention (source padding masked) -> FFN]
    dec = N x [masked self-attention -> cross-attention on enc (source padding masked) -> FFN]
    logits = dec @ E^T                                             (E shared: joint vocabulary)

Every sub-layer is wrapped as LayerNorm(x + Dropout(sublayer(x))) (post-LN, the paper), or
x + Dropout(sublayer(LayerNorm(x))) with a final LayerNorm when `norm_first` (pre-LN). The
building blocks (config, embeddings, attention, layers) are in transformer_layers.py; this module
assembles them and holds the decoding contract below.

Padding: source keys are masked in encoder self-attention and in cross-attention. Targets are
right-padded, so the causal mask already keeps every real target position from seeing a pad
(pads only come after it); the loss ignores the pad positions themselves.

Incremental decoding and export
-------------------------------
Generation splits into three tensor-only functions, which is also the ONNX contract the export
owner builds on (no Python containers in any signature):

    encode(src_ids (B,S) int64)
        -> memory (B,S,D) float, memory_mask (B,S) bool (True = real token)
    cross_kv(memory (B,S,D))
        -> cross_k, cross_v (L,B,H,S,hd): every decoder layer's encoder-decoder keys/values,
           computed once per source
    decode_step(tokens (B,) int64, position (B,) int64, memory_mask (B,S) bool,
                cross_k, cross_v (L,B,H,S,hd), self_k, self_v (L,B,H,t,hd),
                [self_mask (B,t+1) bool])
        -> logits (B,V) float, new_self_k, new_self_v (L,B,H,t+1,hd)

`tokens` is the token at `position` (position 0 holds `<sos>`); `self_k/self_v` hold the keys and
values of positions 0..t-1 for every decoder layer, stacked (t = 0 at the first step: a tensor with
an empty time axis). The step appends the new position's keys/values and returns the grown cache,
so a step costs O(t) attention and never recomputes the prefix. L = decoder layers, H = heads,
hd = d_model / H. Beam search reorders hypotheses with `index_select` on the batch axis (dim 1 of
the caches, dim 0 of the mask). `decode(memory, memory_mask, tgt_in)` is the uncached,
teacher-forced equivalent (training, tests, benchmarks) and gives the same logits position by
position.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from model_src.translator.transformer_layers import (
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    LayerSelfAttend,
    TransformerConfig,
)


@dataclass
class TransformerState:
    """The decoding cache of a batch of hypotheses (see the module docstring for shapes)."""

    memory_mask: Tensor  # (B, S) bool
    cross_k: Tensor  # (L, B, H, S, hd)
    cross_v: Tensor  # (L, B, H, S, hd)
    self_k: Tensor  # (L, B, H, t, hd)
    self_v: Tensor  # (L, B, H, t, hd)
    position: Tensor  # (B,) int64: position of the next input token

    def select(self, index: Tensor) -> TransformerState:
        """Keep/reorder/duplicate hypotheses: row i of the result is row index[i]."""
        return TransformerState(
            memory_mask=self.memory_mask.index_select(0, index),
            cross_k=self.cross_k.index_select(1, index),
            cross_v=self.cross_v.index_select(1, index),
            self_k=self.self_k.index_select(1, index),
            self_v=self.self_v.index_select(1, index),
            position=self.position.index_select(0, index),
        )


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        src_token = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_id)
        tgt_token = (
            src_token
            if config.tie_embeddings
            else nn.Embedding(config.vocab_size, D, padding_idx=config.pad_id)
        )
        self.src_embed = Embeddings(config, src_token)
        self.tgt_embed = Embeddings(config, tgt_token)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(config) for _ in range(config.n_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.n_decoder_layers)
        )
        # Pre-LN leaves the residual stream unnormalised; the final norms fix its scale.
        self.encoder_norm = nn.LayerNorm(D) if config.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(D) if config.norm_first else nn.Identity()
        self.out_proj = nn.Linear(D, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.out_proj.weight = src_token.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name:
                # std d^-1/2: the sqrt(d) scale then gives unit-variance inputs, and tied output
                # logits start small.
                nn.init.normal_(p, std=self.config.d_model**-0.5)
            elif p.ndim == 2:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for embed in (self.src_embed.token, self.tgt_embed.token):
            with torch.no_grad():
                embed.weight[self.config.pad_id].zero_()

    def _decoder(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.decoder_layers))

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    # ---- encoder ------------------------------------------------------------------------------
    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """src_ids (B,S) -> memory (B,S,D), memory_mask (B,S) bool (True on real tokens)."""
        memory_mask = src_ids != self.config.pad_id
        positions = torch.arange(src_ids.size(1), device=src_ids.device)
        x = self.src_embed(src_ids, positions)
        attn_mask = memory_mask[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder_layers:
            x = layer(x, attn_mask)
        return self.encoder_norm(x), memory_mask

    def cross_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B,S,D) -> cross_k, cross_v (L,B,H,S,hd), once per source."""
        kv = [layer.cross_attn.keys_values(memory) for layer in self._decoder()]
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])

    # ---- decoder: teacher forcing (uncached) ----------------------------------------------------
    def decode(self, memory: Tensor, memory_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """All target positions at once under a causal mask: tgt_in (B,T) -> logits (B,T,V)."""
        T = tgt_in.size(1)
        positions = torch.arange(T, device=tgt_in.device)
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).tril()  # (T, T)
        cross_mask = memory_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self.tgt_embed(tgt_in, positions)
        for layer in self._decoder():
            ck, cv = layer.cross_attn.keys_values(memory)
            x, _, _ = layer(x, ck, cv, cross_mask, self_mask=causal)
        return self.out_proj(self.decoder_norm(x))

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B,T,V) for training."""
        memory, memory_mask = self.encode(src_ids)
        return self.decode(memory, memory_mask, tgt_in)

    # ---- decoder: one incremental step (the exportable function) -------------------------------
    def decode_step(
        self,
        tokens: Tensor,
        position: Tensor,
        memory_mask: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        self_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One new position per hypothesis; shapes in the module docstring. `self_mask` (B, t+1)
        bool, True on the cached positions a row may see (and on the new one, index t), lets
        rows with caches of different lengths share a step: a shorter cache is left-padded."""
        logits, new_k, new_v = self.decode_step_layers(
            tokens, position, memory_mask, cross_k, cross_v, self_k, self_v, self_mask
        )
        return logits, torch.stack(new_k), torch.stack(new_v)  # caches (L, B, H, t+1, hd)

    def decode_step_layers(
        self,
        tokens: Tensor,
        position: Tensor,
        memory_mask: Tensor,
        cross_k: Sequence[Tensor] | Tensor,
        cross_v: Sequence[Tensor] | Tensor,
        self_k: Sequence[Tensor] | Tensor,
        self_v: Sequence[Tensor] | Tensor,
        self_mask: Tensor | None = None,
        self_attend: LayerSelfAttend | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """`decode_step` with the caches per layer (stacked tensors or one tensor per layer in,
        one per layer out). `self_attend(layer index, its self-attention module, h)` replaces
        each layer's cached self-attention (DecoderLayer.forward): the export's fused op."""
        x = self.tgt_embed(tokens[:, None], position[:, None])  # (B, 1, D)
        cross_mask = memory_mask[:, None, None, :]  # (B, 1, 1, S)
        causal = None if self_mask is None else self_mask[:, None, None, :]  # (B, 1, 1, t+1)
        new_k, new_v = [], []
        for i, layer in enumerate(self._decoder()):
            attend = (
                None if self_attend is None else functools.partial(self_attend, i, layer.self_attn)
            )
            x, k, v = layer(
                x, cross_k[i], cross_v[i], cross_mask, self_k[i], self_v[i], causal, attend
            )
            new_k.append(k)
            new_v.append(v)
        return self.out_proj(self.decoder_norm(x[:, 0])), new_k, new_v  # logits (B, V)

    # ---- the decoding API shared with the GRU baseline (see decoding.py) -----------------------
    def start(self, memory: Tensor, memory_mask: Tensor) -> TransformerState:
        """Empty self-attention cache and the cross-attention keys/values of each source."""
        cross_k, cross_v = self.cross_kv(memory)
        L, B, H, _, hd = cross_k.shape
        empty = cross_k.new_zeros(L, B, H, 0, hd)  # (L, B, H, 0, hd): no position decoded yet
        position = torch.zeros(B, dtype=torch.long, device=memory.device)
        return TransformerState(memory_mask, cross_k, cross_v, empty, empty, position)

    def step(self, state: TransformerState, tokens: Tensor) -> tuple[Tensor, TransformerState]:
        """Feed tokens (B,) at the state's position -> next-token logits (B,V), advanced state."""
        logits, self_k, self_v = self.decode_step(
            tokens,
            state.position,
            state.memory_mask,
            state.cross_k,
            state.cross_v,
            state.self_k,
            state.self_v,
        )
        return logits, TransformerState(
            state.memory_mask, state.cross_k, state.cross_v, self_k, self_v, state.position + 1
        )
