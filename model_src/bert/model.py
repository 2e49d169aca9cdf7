"""The BERT encoder: embeddings -> self-attention -> feed-forward -> post-LN layer -> encoder.

Read top to bottom like the paper (Devlin et al. 2019, "BERT"; Vaswani et al. 2017 for the
layer). Parameter names are ours; `model_src.bert.hf_checkpoint` holds the one map between them and
the Hugging Face BERT layout, so any HF BERT checkpoint directory loads into `BertModel`.

Everything here is ONNX-exportable with the TorchScript exporter (opset 17) with dynamic batch and
sequence axes: no Python branching on tensor values, shapes only flow through tensor ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnImplementation = Literal["sdpa", "eager"]


@dataclass
class BertConfig:
    """Encoder hyper-parameters. Field names follow HF's config.json so the mapping is 1:1."""

    vocab_size: int = 30522  # uncased English WordPiece (bert-base-uncased, MiniLM)
    hidden_size: int = 384  # MiniLM-L6; bert-base is 768
    num_hidden_layers: int = 6  # MiniLM-L6; bert-base is 12
    num_attention_heads: int = 12  # head size 32 for MiniLM, 64 for bert-base
    intermediate_size: int = 1536  # feed-forward width, 4 x hidden as in the paper
    max_position_embeddings: int = 512  # learned absolute positions, BERT's limit
    type_vocab_size: int = 2  # segment A / segment B
    layer_norm_eps: float = 1e-12  # BERT's value (TF default); matters for exact parity
    hidden_dropout_prob: float = 0.1  # after embeddings, attention output and FFN output
    attention_probs_dropout_prob: float = 0.1  # on the attention weights
    pad_token_id: int = 0  # [PAD] in BERT vocabularies
    hidden_act: str = "gelu"  # exact erf GELU; "gelu_new"/"gelu_pytorch_tanh" = tanh approximation
    initializer_range: float = 0.02  # std of the normal init when training from scratch
    attn_implementation: AttnImplementation = "sdpa"  # "eager" for ONNX export (ORT fuses it)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"attn_implementation must be 'sdpa' or 'eager', not {self.attn_implementation!r}"
            )
        _activation(self.hidden_act)  # fail at config time, not at the first forward

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        """Build from `asdict(config)` (our checkpoints) ignoring keys this version lacks."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_hf_config(
        cls, hf: dict[str, Any], attn_implementation: AttnImplementation = "sdpa"
    ) -> BertConfig:
        """Build from a Hugging Face BERT config.json dict (extra HF keys are ignored)."""
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"expected a BERT config (model_type 'bert'), got {model_type!r}")
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"only absolute position embeddings are supported, got {position_type!r}"
            )
        config = cls.from_dict(hf)
        config.attn_implementation = attn_implementation
        if config.pad_token_id is None:  # some configs store null; BERT vocabularies use 0
            config.pad_token_id = 0
        return config

    def to_hf_config(self) -> dict[str, Any]:
        """The Hugging Face config.json dict for this encoder (BertModel architecture)."""
        hf: dict[str, Any] = {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "position_embedding_type": "absolute",
        }
        for f in fields(self):
            if f.name != "attn_implementation":  # a runtime choice, not part of the weights
                hf[f.name] = getattr(self, f.name)
        return hf


def _activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported hidden_act {name!r} (gelu, gelu_new, gelu_pytorch_tanh, relu)")


class BertEmbeddings(nn.Module):
    """token + learned absolute position + segment embeddings, summed, LayerNorm, dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # A buffer sliced to T keeps the export shape-dynamic (Slice on the sequence length).
        positions = torch.arange(config.max_position_embeddings).unsqueeze(0)  # (1, P)
        self.position_ids: torch.Tensor
        self.register_buffer("position_ids", positions, persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        position_ids = self.position_ids[:, :T]  # (1, T), broadcast over the batch
        x = self.word(input_ids) + self.position(position_ids) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, H)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with a key-padding mask.

    `attn_implementation` picks the kernel: "sdpa" calls F.scaled_dot_product_attention (fused,
    memory-efficient); "eager" writes out matmul -> scale -> +mask -> softmax -> matmul, the
    pattern ONNX Runtime's BERT optimizer recognises and fuses into one Attention node.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout_p = config.attention_probs_dropout_prob
        self.attn_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.implementation = config.attn_implementation

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H); additive_mask: (B, 1, 1, T), 0 for tokens, a large negative for padding."""
        B, T, H = x.shape
        nh, hs = self.num_heads, self.head_size
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.implementation == "sdpa":
            dropout_p = self.attn_dropout_p if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=additive_mask, dropout_p=dropout_p
            )
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
            weights = F.softmax(scores + additive_mask, dim=-1)
            y = self.attn_dropout(weights) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H): heads concatenated
        return self.out(y)


class BertFeedForward(nn.Module):
    """Position-wise feed-forward: Linear(H -> I) -> GELU -> Linear(I -> H)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class BertLayer(nn.Module):
    """Post-LN Transformer layer: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(FFN(x)))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = BertFeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, additive_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class BertEncoder(nn.Module):
    """A stack of `num_hidden_layers` identical post-LN layers."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, additive_mask)
        return x


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's init (truncation aside): N(0, std) weights, zero biases, identity LayerNorms; the
    heads use it for their own layers. Only matters when training from scratch: loading a
    checkpoint overwrites it."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertModel(nn.Module):
    """BERT encoder returning the last hidden states (B, T, H); heads live in bert/heads.py."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.apply(lambda module: init_weights(module, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (1 token / 0 padding), token_type_ids: (B, T) -> (B, T, H)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        additive_mask = extended_attention_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        return self.encoder(x, additive_mask)


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 key mask -> (B, 1, 1, T) additive mask: 0 for tokens, dtype-min for padding.

    Broadcast over heads and query positions; padded queries still attend to the real keys, so
    their (ignored) outputs stay finite.
    """
    mask = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - mask) * torch.finfo(dtype).min
