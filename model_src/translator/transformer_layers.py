"""The Transformer's building blocks (model_src/translator/transformer.py assembles them): its
configuration, the sinusoidal position table, embeddings, multi-head attention, the feed-forward
and residual wrappers, and the encoder and decoder layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_src.translator.tokenizer import EOS_ID, PAD_ID, SOS_ID


@dataclass
class TransformerConfig:
    vocab_size: int = 8000  # joint BPE vocabulary (source and target share it)
    d_model: int = 256  # Multi30k is small: 256 trains fast and matches 512 on BLEU
    n_heads: int = 8  # head size 32
    n_encoder_layers: int = 3  # 3+3 is the usual sweet spot for 29k pairs; 6+6 overfits
    n_decoder_layers: int = 3
    d_ff: int = 1024  # 4 x d_model, as in the paper
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.1  # on attention weights
    max_positions: int = 512  # rows of the sinusoidal table: longest source or target (tokens)
    norm_first: bool = False  # post-LN as in the paper; pre-LN tolerates larger learning rates
    tie_embeddings: bool = True  # one matrix for source, target and output (joint vocabulary)
    attention: str = "sdpa"  # "sdpa" (fused kernel) | "eager" (explicit matmul-softmax, for ONNX)
    pad_id: int = PAD_ID
    sos_id: int = SOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {self.attention!r}")


def sinusoidal_table(max_positions: int, d_model: int) -> Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )  # (D/2,)
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table  # (P, D)


class Embeddings(nn.Module):
    """Token embedding scaled by sqrt(d_model) plus the sinusoidal encoding of its position."""

    pe: Tensor  # (max_positions, D) buffer

    def __init__(self, config: TransformerConfig, token: nn.Embedding) -> None:
        super().__init__()
        self.token = token
        self.scale = math.sqrt(config.d_model)
        # Not persistent: it is a function of the config, so checkpoints need not carry it.
        self.register_buffer(
            "pe", sinusoidal_table(config.max_positions, config.d_model), persistent=False
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """ids (B,T), positions (B,T) or (T,) -> (B,T,D)."""
        return self.dropout(self.token(ids) * self.scale + self.pe[positions])


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(hd)) V per head; keys/values projected separately from queries so a
    decoder can cache them (self-attention) or compute them once (cross-attention)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.attention_dropout = config.attention_dropout
        self.eager = config.attention == "eager"

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,T,D) -> k, v (B,H,T,hd)."""
        return self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Queries from x (B,Tq,D) over k, v (B,H,Tk,hd); mask broadcastable to (B,H,Tq,Tk),
        True where a query may look. -> (B,Tq,D)."""
        q = self._heads(self.q_proj(x))  # (B, H, Tq, hd)
        dropout = self.attention_dropout if self.training else 0.0
        if self.eager:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
            out = weights @ v  # (B, H, Tq, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        B, _, Tq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Tq, -1))  # (B, Tq, D)


# h (B,1,D) -> (attended (B,1,D), k, v (B,H,t+1,hd) for the cache): a replacement for a decoder
# layer's cached self-attention (DecoderLayer.forward), with the layer's index and module bound.
SelfAttend = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
LayerSelfAttend = Callable[[int, "MultiHeadAttention", Tensor], tuple[Tensor, Tensor, Tensor]]


class FeedForward(nn.Module):
    """Position-wise max(0, x W1 + b1) W2 + b2."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class Residual(nn.Module):
    """LayerNorm(x + Dropout(f(x))) (post-LN) or x + Dropout(f(LayerNorm(x))) (pre-LN).

    Split in two halves (`pre`, `post`) so a sub-layer that needs extra inputs (a cache) can sit
    between them."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def pre(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.norm_first else x

    def post(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        y = x + self.dropout(sublayer_out)
        return y if self.norm_first else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config)
        self.ffn = FeedForward(config)
        self.attn_res = Residual(config)
        self.ffn_res = Residual(config)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B,S,D); mask (B,1,1,S) True on real source tokens."""
        h = self.attn_res.pre(x)
        x = self.attn_res.post(x, self.self_attn.attend(h, *self.self_attn.keys_values(h), mask))
        return self.ffn_res.post(x, self.ffn(self.ffn_res.pre(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config)
        self.cross_attn = MultiHeadAttention(config)
        self.ffn = FeedForward(config)
        self.self_res = Residual(config)
        self.cross_res = Residual(config)
        self.ffn_res = Residual(config)

    def forward(
        self,
        x: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        cross_mask: Tensor,
        past_k: Tensor | None = None,
        past_v: Tensor | None = None,
        self_mask: Tensor | None = None,
        self_attend: SelfAttend | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B,T,D) new positions; cross_k/v (B,H,S,hd); cross_mask (B,1,1,S);
        past_k/v (B,H,t,hd) earlier positions or None; self_mask (T, t+T) causal or None (one new
        position may see every cached one). -> (x, k, v) with k, v (B,H,t+T,hd) for the cache.
        `self_attend` (h -> attended, k, v) replaces the cached self-attention sub-layer (the
        export's fused-attention graph); past_k/v and self_mask are then unused."""
        h = self.self_res.pre(x)
        if self_attend is not None:
            attended, k, v = self_attend(h)
        else:
            k, v = self.self_attn.keys_values(h)
            if past_k is not None and past_v is not None:
                k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B,H,t+T,hd)
            attended = self.self_attn.attend(h, k, v, self_mask)
        x = self.self_res.post(x, attended)
        h = self.cross_res.pre(x)
        x = self.cross_res.post(x, self.cross_attn.attend(h, cross_k, cross_v, cross_mask))
        x = self.ffn_res.post(x, self.ffn(self.ffn_res.pre(x)))
        return x, k, v
