"""The baseline: a GRU encoder-decoder with (scaled) dot-product attention, Luong et al. (2015).

    memory          = W_m [GRU_fwd(x) ; GRU_bwd(x)]                bidirectional encoder
    h_t             = GRU_dec(Embed(y_{t-1}), h_{t-1})             hidden state is the only cache
    c_t             = softmax(h_t . memory^T / sqrt(H)) memory     source padding masked
    logits_t        = tanh(W_c [h_t ; c_t]) E^T                    E shared: joint vocabulary

Attention uses the decoder state *after* the GRU step (Luong) rather than before it (Bahdanau),
so teacher forcing runs the decoder GRU over the whole target in one call and attends for all
positions at once, and incremental decoding needs no cache but the GRU hidden state.

The backward direction of the encoder reads each source reversed *within its own length* (an
index gather, no packed sequences), so padding never leaks into a real position and the encoder
exports to ONNX as plain tensors.

Exportable step, the same contract shape as the Transformer's:
    encode(src_ids (B,S) int64) -> memory (B,S,H), memory_mask (B,S) bool
    initial_hidden(memory, memory_mask) -> hidden (L,B,H)
    decode_step(tokens (B,) int64, memory (B,S,H), memory_mask (B,S) bool, hidden (L,B,H))
        -> logits (B,V), new hidden (L,B,H)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model_src.translator.tokenizer import EOS_ID, PAD_ID, SOS_ID


@dataclass
class GRUAttentionConfig:
    vocab_size: int = 8000  # joint BPE vocabulary
    embed_dim: int = 256  # also the attentional-vector size, so the output can tie to E
    hidden_size: int = 512  # encoder (per direction) and decoder GRU width
    n_layers: int = 2  # encoder and decoder depth
    dropout: float = 0.3  # RNNs on 29k pairs overfit quickly; 0.3 is the usual Multi30k value
    tie_embeddings: bool = True  # one matrix for source, target and output
    pad_id: int = PAD_ID
    sos_id: int = SOS_ID
    eos_id: int = EOS_ID


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row of x (B,S,...) within its first lengths[b] positions; padding stays put."""
    S = x.size(1)
    t = torch.arange(S, device=x.device)[None, :]  # (1, S)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, S)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


@dataclass
class GRUState:
    """Decoding state of a batch of hypotheses."""

    memory: Tensor  # (B, S, H)
    memory_mask: Tensor  # (B, S) bool
    hidden: Tensor  # (L, B, H)

    def select(self, index: Tensor) -> GRUState:
        return GRUState(
            self.memory.index_select(0, index),
            self.memory_mask.index_select(0, index),
            self.hidden.index_select(1, index),
        )


class GRUAttention(nn.Module):
    def __init__(self, config: GRUAttentionConfig) -> None:
        super().__init__()
        self.config = config
        E, H, L = config.embed_dim, config.hidden_size, config.n_layers
        self.src_embed = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_id)
        self.tgt_embed = (
            self.src_embed
            if config.tie_embeddings
            else nn.Embedding(config.vocab_size, E, padding_idx=config.pad_id)
        )
        self.dropout = nn.Dropout(config.dropout)
        # One single-layer GRU per direction and layer: the backward one reads reversed sources.
        self.enc_fwd = nn.ModuleList(
            nn.GRU(E if i == 0 else 2 * H, H, batch_first=True) for i in range(L)
        )
        self.enc_bwd = nn.ModuleList(
            nn.GRU(E if i == 0 else 2 * H, H, batch_first=True) for i in range(L)
        )
        self.memory_proj = nn.Linear(2 * H, H)  # dot-product attention needs memory in H
        self.init_proj = nn.Linear(H, L * H)  # mean of the memory -> decoder's h_0
        self.decoder = nn.GRU(E, H, num_layers=L, batch_first=True, dropout=config.dropout)
        self.combine = nn.Linear(2 * H, E)  # W_c
        self.out_proj = nn.Linear(E, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.out_proj.weight = self.src_embed.weight
        nn.init.normal_(self.src_embed.weight, std=E**-0.5)
        with torch.no_grad():
            self.src_embed.weight[config.pad_id].zero_()

    # ---- encoder ------------------------------------------------------------------------------
    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """src_ids (B,S) -> memory (B,S,H), memory_mask (B,S) bool."""
        memory_mask = src_ids != self.config.pad_id
        lengths = memory_mask.sum(1)  # (B,)
        x = self.dropout(self.src_embed(src_ids))  # (B, S, E)
        for fwd, bwd in zip(self.enc_fwd, self.enc_bwd, strict=True):
            f, _ = fwd(x)  # (B, S, H)
            b, _ = bwd(reverse_padded(x, lengths))
            x = self.dropout(torch.cat([f, reverse_padded(b, lengths)], dim=-1))  # (B, S, 2H)
        memory = self.memory_proj(x)
        return memory, memory_mask

    def initial_hidden(self, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """h_0 (L,B,H) from the mean of the memory over real source positions.

        A masked mean rather than the "last" states: it is a function of (memory, mask) alone, so
        the exported encoder needs only those two outputs."""
        m = memory_mask.unsqueeze(-1).to(memory.dtype)  # (B, S, 1)
        mean = (memory * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        L, H = self.config.n_layers, self.config.hidden_size
        h0 = torch.tanh(self.init_proj(mean))  # (B, L*H)
        return h0.view(-1, L, H).transpose(0, 1).contiguous()  # (L, B, H)

    # ---- decoder ------------------------------------------------------------------------------
    def _attend_and_project(self, h: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Decoder states h (B,T,H) -> logits (B,T,V)."""
        scores = h @ memory.transpose(1, 2) / math.sqrt(h.size(-1))  # (B, T, S)
        scores = scores.masked_fill(~memory_mask[:, None, :], torch.finfo(scores.dtype).min)
        context = scores.softmax(-1) @ memory  # (B, T, H)
        attentional = torch.tanh(self.combine(torch.cat([h, context], dim=-1)))  # (B, T, E)
        return self.out_proj(self.dropout(attentional))

    def decode(self, memory: Tensor, memory_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing over all positions: tgt_in (B,T) -> logits (B,T,V)."""
        h0 = self.initial_hidden(memory, memory_mask)
        h, _ = self.decoder(self.dropout(self.tgt_embed(tgt_in)), h0)  # (B, T, H)
        return self._attend_and_project(h, memory, memory_mask)

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        memory, memory_mask = self.encode(src_ids)
        return self.decode(memory, memory_mask, tgt_in)

    def decode_step(
        self, tokens: Tensor, memory: Tensor, memory_mask: Tensor, hidden: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One position: tokens (B,) -> logits (B,V), new hidden (L,B,H)."""
        h, hidden = self.decoder(self.dropout(self.tgt_embed(tokens[:, None])), hidden)
        return self._attend_and_project(h, memory, memory_mask)[:, 0], hidden

    # ---- the decoding API shared with the Transformer (see decoding.py) ------------------------
    def start(self, memory: Tensor, memory_mask: Tensor) -> GRUState:
        return GRUState(memory, memory_mask, self.initial_hidden(memory, memory_mask))

    def step(self, state: GRUState, tokens: Tensor) -> tuple[Tensor, GRUState]:
        logits, hidden = self.decode_step(tokens, state.memory, state.memory_mask, state.hidden)
        return logits, GRUState(state.memory, state.memory_mask, hidden)
