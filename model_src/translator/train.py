"""`python -m model_src train translator`: train the Transformer (or the GRU baseline) from scratch.

    python -m model_src train translator \\
        --train-src ../shared/data/multi30k/train.en.gz \\
        --train-tgt ../shared/data/multi30k/train.de.gz \\
        --dev-src ../shared/data/multi30k/val.en --dev-tgt ../shared/data/multi30k/val.de \\
        --out runs/translator [--arch transformer|gru-attention]

Recipe: joint BPE trained on the training pairs; batches bucketed by length under a padded-token
budget; teacher forcing with label-smoothed cross-entropy (pads ignored, mean per target token);
AdamW (betas 0.9/0.98 as in the paper) with inverse-square-root warm-up; gradient clipping; dev loss
and dev sacreBLEU (greedy unless --dev-beam) after every epoch or every --eval-every steps; the
checkpoint in --out is always the best by dev BLEU. Writes metrics.jsonl and training_curve.png.
CUDA runs under bf16 autocast; under torchrun each rank takes its share of the batches (DDP).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_src import training
from model_src.checkpoint import jsonable
from model_src.translator import tokenizer as tok
from model_src.translator.checkpoint import (
    Translator,
    build_model,
    load_translator,
    save_translator,
)
from model_src.translator.data import bucket_batches, collate, read_parallel, shard_batches
from model_src.translator.evaluate import score, translate
from model_src.translator.rnn import GRUAttentionConfig
from model_src.translator.transformer import TransformerConfig

log = logging.getLogger(__name__)

# Per-architecture defaults for options left unset on the command line.
ARCH_DEFAULTS: dict[str, dict[str, float]] = {
    # Peak 7e-4 is the Noam schedule's peak for d_model 512 (safe for 256). Multi30k gives only
    # ~120 updates per epoch at 4096 tokens, so the paper's 4000 warm-up steps would spend a third
    # of a 30-epoch run warming up; 1000 (~8 epochs) is enough for a 3-layer model.
    "transformer": {"lr": 7e-4, "warmup": 1000},
    # The GRU is stable at Adam's usual 1e-3 and needs only a short warm-up.
    "gru-attention": {"lr": 1e-3, "warmup": 1000},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--train-src", type=Path, required=True, help="source lines (.gz ok)")
    data.add_argument("--train-tgt", type=Path, required=True, help="target lines (.gz ok)")
    data.add_argument("--dev-src", type=Path, required=True)
    data.add_argument("--dev-tgt", type=Path, required=True)
    data.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    data.add_argument("--max-train-examples", type=int, default=None)
    data.add_argument("--max-dev-examples", type=int, default=None, help="dev pairs to score")
    data.add_argument("--max-length", type=int, default=128, help="tokens per sentence (cut)")
    data.add_argument("--vocab-size", type=int, default=8000, help="joint BPE vocabulary size")
    data.add_argument("--tokenizer", type=Path, default=None, help="reuse this tokenizer.json")
    data.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from this translator checkpoint (its arch, size and tokenizer; "
        "fresh optimiser and schedule)",
    )

    model = parser.add_argument_group("model (unset = the config dataclass default)")
    model.add_argument("--arch", choices=["transformer", "gru-attention"], default="transformer")
    model.add_argument("--d-model", type=int, default=None, help="transformer width")
    model.add_argument("--heads", type=int, default=None, help="transformer attention heads")
    model.add_argument("--ffn", type=int, default=None, help="transformer feed-forward width")
    model.add_argument("--layers", type=int, default=None, help="encoder and decoder layers")
    model.add_argument("--dropout", type=float, default=None)
    model.add_argument("--norm-first", action="store_true", help="pre-LN transformer")
    model.add_argument("--attention", choices=["sdpa", "eager"], default=None)
    model.add_argument("--embed-dim", type=int, default=None, help="GRU embedding size")
    model.add_argument("--hidden-size", type=int, default=None, help="GRU hidden size")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=30)
    opt.add_argument("--max-steps", type=int, default=0, help="stop after N updates (0 = no cap)")
    opt.add_argument("--time-budget-minutes", type=float, default=None, help="stop after this")
    opt.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    opt.add_argument("--lr", type=float, default=None, help="peak learning rate")
    opt.add_argument("--warmup", type=int, default=None, help="warm-up steps")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--label-smoothing", type=float, default=0.1)
    opt.add_argument("--clip-norm", type=float, default=1.0)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    opt.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    opt.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")

    ev = parser.add_argument_group("evaluation and logging")
    ev.add_argument("--eval-every", type=int, default=0, help="steps; 0 = after every epoch")
    ev.add_argument("--dev-beam", type=int, default=1, help="beam for dev BLEU (1 = greedy)")
    ev.add_argument("--decode-batch-size", type=int, default=128)
    ev.add_argument("--log-every", type=int, default=50, help="steps between train records")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


def model_config(args: argparse.Namespace, vocab_size: int) -> dict[str, Any]:
    """The architecture's dataclass defaults, overridden by the options that were given."""
    if args.arch == "transformer":
        overrides = {
            "d_model": args.d_model,
            "n_heads": args.heads,
            "d_ff": args.ffn,
            "n_encoder_layers": args.layers,
            "n_decoder_layers": args.layers,
            "dropout": args.dropout,
            "attention_dropout": args.dropout,
            "attention": args.attention,
            "norm_first": args.norm_first or None,
            # The positional table must cover the longest target the decoder may produce.
            "max_positions": max(args.max_length, TransformerConfig.max_positions),
        }
        defaults = {f.name: f.default for f in fields(TransformerConfig)}
    else:
        overrides = {
            "embed_dim": args.embed_dim,
            "hidden_size": args.hidden_size,
            "n_layers": args.layers,
            "dropout": args.dropout,
        }
        defaults = {f.name: f.default for f in fields(GRUAttentionConfig)}
    config = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    config["vocab_size"] = vocab_size
    return config


class Trainer:
    """Owns the model, optimiser and bookkeeping of one run; `fit` is the loop."""

    def __init__(self, args: argparse.Namespace, ctx: training.DistContext) -> None:
        self.args = args
        self.ctx = ctx
        self.device = ctx.device
        self.out: Path = args.out
        self.start_time = time.monotonic()

        src, tgt = read_parallel(args.train_src, args.train_tgt, args.max_train_examples)
        self.dev_src, self.dev_tgt = read_parallel(
            args.dev_src, args.dev_tgt, args.max_dev_examples
        )
        self.init = self._init_checkpoint()
        self.tokenizer = self._tokenizer(src + tgt)
        self.train_src = tok.encode(self.tokenizer, src, args.max_length)
        self.train_tgt = tok.encode(self.tokenizer, tgt, args.max_length)
        self.dev_src_ids = tok.encode(self.tokenizer, self.dev_src, args.max_length)
        self.dev_tgt_ids = tok.encode(self.tokenizer, self.dev_tgt, args.max_length)
        log.info(
            "%d training pairs, %d dev pairs, vocabulary %d",
            len(src),
            len(self.dev_src),
            self.tokenizer.get_vocab_size(),
        )

        defaults = ARCH_DEFAULTS[args.arch]
        self.lr = args.lr if args.lr is not None else defaults["lr"]
        self.warmup = args.warmup if args.warmup is not None else int(defaults["warmup"])
        if self.init is not None:
            init_model, init_config, _ = self.init
            self.model_config = init_config["model"]
            model = init_model.to(self.device)
            log.info(
                "continuing from %s (its step %s)",
                args.init,
                init_config.get("best", {}).get("step"),
            )
        else:
            self.model_config = model_config(args, self.tokenizer.get_vocab_size())
            model = build_model(args.arch, self.model_config).to(self.device)
        log.info(
            "%s: %.2fM parameters", args.arch, sum(p.numel() for p in model.parameters()) / 1e6
        )
        self.model = training.wrap_ddp(model, ctx)
        self.optimizer = training.build_adamw(
            model, self.lr, args.weight_decay, betas=(0.9, 0.98), eps=1e-9
        )
        self.scheduler = training.inverse_sqrt_warmup(self.optimizer, self.warmup)
        self.loss_fn = nn.CrossEntropyLoss(
            ignore_index=tok.PAD_ID, label_smoothing=args.label_smoothing
        )
        self.metrics = training.MetricsLogger(self.out / "metrics.jsonl", enabled=ctx.is_main)
        self.step = 0
        self.best: dict[str, Any] = {"dev_bleu": -1.0}
        self.last_eval_step = -1
        self.grad_norm = float("nan")

    def _init_checkpoint(self) -> tuple[Translator, dict[str, Any], Any] | None:
        """(model, config, tokenizer) of --init. Its architecture overrides --arch and the size
        options: the weights only fit the shapes they were trained with."""
        if self.args.init is None:
            return None
        model, config, tokenizer = load_translator(self.args.init)
        if config["arch"] != self.args.arch:
            log.warning("--init is a %s checkpoint; using that architecture", config["arch"])
            self.args.arch = config["arch"]
        return model, config, tokenizer

    def _tokenizer(self, texts: list[str]) -> Any:
        """The --init checkpoint's tokenizer (its ids are baked into the weights), else reuse
        --tokenizer, or train one on the main rank and share it through the out dir
        (every rank must use the same ids)."""
        if self.init is not None:
            return self.init[2]
        if self.args.tokenizer is not None:
            return tok.load_tokenizer(self.args.tokenizer)
        path = self.out / tok.TOKENIZER_FILE
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tok.train_joint_bpe(texts, self.args.vocab_size).save(str(path))
        training.barrier(self.ctx)
        return tok.load_tokenizer(path)

    # ---- training ---------------------------------------------------------------------------
    def train_step(self, src: list[list[int]], tgt: list[list[int]]) -> tuple[float, int]:
        """One update; returns (summed token loss, target tokens)."""
        batch = collate(src, tgt).to(self.device)
        with training.autocast(self.device, enabled=not self.args.no_amp):
            logits = self.model(batch.src, batch.tgt_in)  # (B, T, V)
        loss = self.loss_fn(logits.float().flatten(0, 1), batch.tgt_out.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = training.clip_grad(self.model, self.args.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.grad_norm = grad_norm
        ntok = batch.num_target_tokens
        return float(loss.detach()) * ntok, ntok

    def should_stop(self) -> bool:
        """Step cap or time budget; agreed across ranks so they leave the loop together."""
        stop = bool(self.args.max_steps and self.step >= self.args.max_steps)
        budget = self.args.time_budget_minutes
        if budget is not None and time.monotonic() - self.start_time > budget * 60:
            stop = True
        if self.ctx.is_distributed:
            stop = training.all_reduce_sum([float(stop)], self.ctx)[0] > 0
        return stop

    def fit(self) -> dict[str, Any]:
        args = self.args
        stop = False
        for epoch in range(1, args.epochs + 1):
            batches = bucket_batches(
                [len(s) for s in self.train_src],
                [len(t) for t in self.train_tgt],
                args.max_tokens,
                shuffle=True,
                seed=args.seed * 1000 + epoch,
            )
            batches = shard_batches(batches, self.ctx.rank, self.ctx.world_size)
            self.model.train()
            bar = training.progress_bar(
                len(batches), f"epoch {epoch}", enabled=self.ctx.is_main and not args.no_progress
            )
            loss_sum, tokens, window_start = 0.0, 0, time.monotonic()
            for indices in batches:
                batch_loss, ntok = self.train_step(
                    [self.train_src[i] for i in indices], [self.train_tgt[i] for i in indices]
                )
                loss_sum, tokens = loss_sum + batch_loss, tokens + ntok
                bar.update(1)
                if self.step % args.log_every == 0:
                    elapsed = time.monotonic() - window_start
                    record = {
                        "loss": loss_sum / max(tokens, 1),
                        "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": self.grad_norm,
                        # target tokens per second on this rank
                        "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                    }
                    bar.set_postfix(
                        loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}"
                    )
                    self.metrics.log(split="train", step=self.step, epoch=epoch, **record)
                    loss_sum, tokens, window_start = 0.0, 0, time.monotonic()
                if args.eval_every and self.step % args.eval_every == 0:
                    eval_start = time.monotonic()
                    self.evaluate(epoch)
                    window_start += time.monotonic() - eval_start  # keep tokens/s about training
                if self.should_stop():
                    stop = True
                    break
            bar.close()
            if not args.eval_every or stop or epoch == args.epochs:
                self.evaluate(epoch)
            if stop:
                log.info("stopping at step %d (step cap or time budget reached)", self.step)
                break
        if self.ctx.is_main:
            training.plot_training_curves(
                self.out / "metrics.jsonl", self.out / "training_curve.png"
            )
        return self.best

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def dev_loss(self) -> float:
        """Token-mean label-smoothed loss on the dev pairs (the training objective)."""
        batches = bucket_batches(
            [len(s) for s in self.dev_src_ids],
            [len(t) for t in self.dev_tgt_ids],
            self.args.max_tokens,
            shuffle=False,
        )
        loss_sum, tokens = 0.0, 0
        for indices in batches[self.ctx.rank :: self.ctx.world_size]:
            batch = collate(
                [self.dev_src_ids[i] for i in indices], [self.dev_tgt_ids[i] for i in indices]
            ).to(self.device)
            with training.autocast(self.device, enabled=not self.args.no_amp):
                logits = training.unwrap(self.model)(batch.src, batch.tgt_in)
            n = batch.num_target_tokens
            loss_sum += (
                float(self.loss_fn(logits.float().flatten(0, 1), batch.tgt_out.flatten())) * n
            )
            tokens += n
        loss_sum, tokens_f = training.all_reduce_sum([loss_sum, float(tokens)], self.ctx)
        return loss_sum / max(tokens_f, 1.0)

    def evaluate(self, epoch: int) -> None:
        if self.step == self.last_eval_step:
            return
        self.last_eval_step = self.step
        model = training.unwrap(self.model)
        model.eval()
        loss = self.dev_loss()
        if self.ctx.is_main:
            start = time.monotonic()
            with training.autocast(self.device, enabled=not self.args.no_amp):
                hyps = translate(
                    model,  # type: ignore[arg-type]
                    self.tokenizer,
                    self.dev_src,
                    self.args.max_length,
                    beam_size=self.args.dev_beam,
                    max_new_tokens=self.args.max_length,
                    batch_size=self.args.decode_batch_size,
                    device=self.device,
                )
            scores = score(hyps, self.dev_tgt)
            record = {
                "loss": loss,
                "perplexity": math.exp(min(loss, 50.0)),
                "bleu": scores["bleu"],
                "chrf": scores["chrf"],
                "decode_seconds": time.monotonic() - start,
            }
            self.metrics.log(split="dev", step=self.step, epoch=epoch, **record)
            log.info(
                "step %d epoch %d: dev loss %.3f BLEU %.2f chrF %.2f (e.g. %r)",
                self.step,
                epoch,
                loss,
                scores["bleu"],
                scores["chrf"],
                hyps[0] if hyps else "",
            )
            if scores["bleu"] > self.best["dev_bleu"]:
                self.best = {
                    "step": self.step,
                    "epoch": epoch,
                    "dev_bleu": scores["bleu"],
                    "dev_chrf": scores["chrf"],
                    "dev_loss": loss,
                    "dev_beam": self.args.dev_beam,
                    "elapsed_s": round(time.monotonic() - self.start_time, 1),
                }
                self.save()
        training.barrier(self.ctx)
        self.model.train()

    def save(self) -> None:
        save_translator(
            self.out,
            training.unwrap(self.model),
            self.args.arch,
            self.tokenizer,
            self.args.max_length,
            extra={
                "generation": {
                    "beam_size": 4,
                    "max_new_tokens": self.args.max_length,
                    "length_penalty": 1.0,
                },
                "best": self.best,
                "train_args": {k: jsonable(v) for k, v in vars(self.args).items()},
                "optimizer": {"lr": self.lr, "warmup": self.warmup, "betas": [0.9, 0.98]},
                "init": None
                if self.init is None
                else {
                    "checkpoint": str(self.args.init),
                    "best": self.init[1].get("best"),
                },
                "data": {"train_pairs": len(self.train_src), "dev_pairs": len(self.dev_src)},
                "world_size": self.ctx.world_size,
                "device": str(self.device),
            },
        )


def run(args: argparse.Namespace) -> int:
    for name in ("train_src", "train_tgt", "dev_src", "dev_tgt"):
        path = getattr(args, name)
        if not path.is_file():
            print(f"error: --{name.replace('_', '-')} {path}: no such file")
            return 2
    if args.init is not None and not (args.init / "config.json").is_file():
        print(f"error: --init {args.init}: no translator checkpoint there (config.json missing)")
        return 2
    if args.tokenizer is not None and not args.tokenizer.is_file():
        print(f"error: --tokenizer {args.tokenizer}: no such file")
        return 2
    try:
        ctx = training.init_distributed(args.device)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    training.seed_everything(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        try:
            trainer = Trainer(args, ctx)
        except ValueError as e:
            print(f"error: {e}")
            return 2
        best = trainer.fit()
        if ctx.is_main:
            print(
                f"best dev BLEU {best.get('dev_bleu', float('nan')):.2f} at step "
                f"{best.get('step')} -> {args.out}"
            )
        return 0
    finally:
        training.cleanup_distributed(ctx)
