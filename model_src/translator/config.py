"""The translator's training options, declared once: `TranslatorConfig` (every field is an option
of `python -m model_src train translator`) and the model config it implies."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from model_src.common.options import option
from model_src.common.resume import RunControl
from model_src.translator.rnn import GRUAttentionConfig
from model_src.translator.transformer_layers import TransformerConfig

# Per-architecture defaults for options left unset on the command line.
ARCH_DEFAULTS: dict[str, dict[str, float]] = {
    # Peak 7e-4 is the Noam schedule's peak for d_model 512 (safe for 256). Multi30k gives only
    # ~120 updates per epoch at 4096 tokens, so the paper's 4000 warm-up steps would spend a third
    # of a 30-epoch run warming up; 1000 (~8 epochs) is enough for a 3-layer model.
    "transformer": {"lr": 7e-4, "warmup": 1000},
    # The GRU is stable at Adam's usual 1e-3 and needs only a short warm-up.
    "gru-attention": {"lr": 1e-3, "warmup": 1000},
}

_DATA = "data"
_MODEL = "model (unset = the config dataclass default)"
_OPT = "optimisation"
_EVAL = "evaluation and logging"


@dataclass(kw_only=True)
class TranslatorConfig:
    """A translator training run."""

    train_src: Path = option(help="source lines (.gz ok)", group=_DATA)
    train_tgt: Path = option(help="target lines (.gz ok)", group=_DATA)
    dev_src: Path = option(help="dev source lines (BLEU, dev loss)", group=_DATA)
    dev_tgt: Path = option(help="dev reference lines", group=_DATA)
    out: Path = option(help="checkpoint directory to write", group=_DATA)
    max_train_examples: int | None = option(None, "the first N training pairs", group=_DATA)
    max_dev_examples: int | None = option(None, "dev pairs to score", group=_DATA)
    max_length: int = option(128, "tokens per sentence (cut)", group=_DATA)
    vocab_size: int = option(8000, "joint BPE vocabulary size", group=_DATA)
    tokenizer: Path | None = option(None, "reuse this tokenizer.json", group=_DATA)
    init: Path | None = option(
        None, "continue from this translator checkpoint (its arch, size and tokenizer; fresh "
        "optimiser and schedule)", group=_DATA,
    )  # fmt: skip

    arch: str = option(
        "transformer", "the baseline is gru-attention", choices=("transformer", "gru-attention"),
        group=_MODEL,
    )  # fmt: skip
    d_model: int | None = option(None, "transformer width", group=_MODEL)
    heads: int | None = option(None, "transformer attention heads", group=_MODEL)
    ffn: int | None = option(None, "transformer feed-forward width", group=_MODEL)
    layers: int | None = option(None, "encoder and decoder layers", group=_MODEL)
    dropout: float | None = option(None, "dropout (and attention dropout)", group=_MODEL)
    norm_first: bool = option(False, "pre-LN transformer", group=_MODEL)
    attention: str | None = option(None, choices=("sdpa", "eager"), group=_MODEL)
    embed_dim: int | None = option(None, "GRU embedding size", group=_MODEL)
    hidden_size: int | None = option(None, "GRU hidden size", group=_MODEL)

    epochs: int = option(30, "passes over the training pairs", group=_OPT)
    time_budget_minutes: float | None = option(None, "stop after this", group=_OPT)
    max_tokens: int = option(4096, "padded tokens per batch", group=_OPT)
    lr: float | None = option(None, "peak learning rate (default: the arch's)", group=_OPT)
    warmup: int | None = option(None, "warm-up steps (default: the arch's)", group=_OPT)
    weight_decay: float = option(0.0, "AdamW decay of weight matrices", group=_OPT)
    label_smoothing: float = option(0.1, "the Transformer paper's 0.1", group=_OPT)
    clip_norm: float = option(1.0, "global gradient-norm clip; <= 0: off", group=_OPT)
    seed: int = option(0, "init, batch order and dropout", group=_OPT)
    threads: int = option(0, "torch CPU threads (0 = default)", group=_OPT)

    eval_every: int = option(0, "steps; 0 = after every epoch", group=_EVAL)
    dev_beam: int = option(1, "beam for dev BLEU (1 = greedy)", group=_EVAL)
    decode_batch_size: int = option(128, "dev sentences decoded at once", group=_EVAL)
    log_every: int = option(50, "steps between train records", group=_EVAL)
    no_progress: bool = option(False, "no progress bar", group=_EVAL)
    run: RunControl = option(default_factory=RunControl)  # device, resume, step cap

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else ARCH_DEFAULTS[self.arch]["lr"]

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else int(ARCH_DEFAULTS[self.arch]["warmup"])


def model_config(cfg: TranslatorConfig, vocab_size: int) -> dict[str, Any]:
    """The architecture's dataclass defaults, overridden by the options that were given."""
    if cfg.arch == "transformer":
        overrides = {
            "d_model": cfg.d_model,
            "n_heads": cfg.heads,
            "d_ff": cfg.ffn,
            "n_encoder_layers": cfg.layers,
            "n_decoder_layers": cfg.layers,
            "dropout": cfg.dropout,
            "attention_dropout": cfg.dropout,
            "attention": cfg.attention,
            "norm_first": cfg.norm_first or None,
            # The positional table must cover the longest target the decoder may produce.
            "max_positions": max(cfg.max_length, TransformerConfig.max_positions),
        }
        defaults = {f.name: f.default for f in fields(TransformerConfig)}
    else:
        overrides = {
            "embed_dim": cfg.embed_dim,
            "hidden_size": cfg.hidden_size,
            "n_layers": cfg.layers,
            "dropout": cfg.dropout,
        }
        defaults = {f.name: f.default for f in fields(GRUAttentionConfig)}
    config = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    config["vocab_size"] = vocab_size
    return config
