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
checkpoint in --out is always the best by dev BLEU, and --out/resume.pt lets `--resume` continue
an interrupted run exactly. Writes metrics.jsonl and training_curve.png. Matmuls run in bf16
where --precision says (auto: CUDA and bf16-capable CPUs); under torchrun each rank takes its
share of the batches (DDP). The options are the fields of `TranslatorConfig`
(translator/config.py).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_src.common import resume, training
from model_src.common.checkpoint import jsonable
from model_src.common.options import add_options, from_args
from model_src.translator import tokenizer as tok
from model_src.translator.checkpoint import (
    Translator,
    build_model,
    load_translator,
    save_translator,
)
from model_src.translator.config import TranslatorConfig, model_config
from model_src.translator.data import bucket_batches, collate, read_parallel, shard_batches
from model_src.translator.evaluate import score, translate

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TranslatorConfig)


class Trainer:
    """Owns the model, optimiser and bookkeeping of one run; `fit` is the loop."""

    def __init__(self, cfg: TranslatorConfig, ctx: training.DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.out: Path = cfg.out
        self.start_time = time.monotonic()

        src, tgt = read_parallel(cfg.train_src, cfg.train_tgt, cfg.max_train_examples)
        self.dev_src, self.dev_tgt = read_parallel(cfg.dev_src, cfg.dev_tgt, cfg.max_dev_examples)
        self.init = self._init_checkpoint()
        self.tokenizer = self._tokenizer(src + tgt)
        self.train_src = tok.encode(self.tokenizer, src, cfg.max_length)
        self.train_tgt = tok.encode(self.tokenizer, tgt, cfg.max_length)
        self.dev_src_ids = tok.encode(self.tokenizer, self.dev_src, cfg.max_length)
        self.dev_tgt_ids = tok.encode(self.tokenizer, self.dev_tgt, cfg.max_length)
        log.info(
            "%d training pairs, %d dev pairs, vocabulary %d",
            len(src),
            len(self.dev_src),
            self.tokenizer.get_vocab_size(),
        )

        self.lr, self.warmup = cfg.peak_lr, cfg.warmup_steps
        if self.init is not None:
            init_model, init_config, _ = self.init
            self.model_config = init_config["model"]
            model = init_model.to(self.device)
            init_step = init_config.get("best", {}).get("step")
            log.info("continuing from %s (its step %s)", cfg.init, init_step)
        else:
            self.model_config = model_config(cfg, self.tokenizer.get_vocab_size())
            model = build_model(cfg.arch, self.model_config).to(self.device)
        log.info("%s: %.2fM parameters", cfg.arch, sum(p.numel() for p in model.parameters()) / 1e6)
        self.model = training.wrap_ddp(model, ctx)
        self.optimizer = training.build_adamw(
            model, self.lr, cfg.weight_decay, betas=(0.9, 0.98), eps=1e-9
        )
        self.scheduler = training.inverse_sqrt_warmup(self.optimizer, self.warmup)
        self.loss_fn = nn.CrossEntropyLoss(
            ignore_index=tok.PAD_ID, label_smoothing=cfg.label_smoothing
        )
        self.position = resume.Position()
        self.best: dict[str, Any] = {"dev_bleu": -1.0}
        self.last_eval_step = -1
        self.grad_norm = float("nan")
        self.files = resume.RunFiles(self.out, cfg.run, ctx.is_main)
        if (resumed := self.files.take_resumed()) is not None:
            self.position = resumed.position
            self.best, self.last_eval_step = resumed.extra["best"], resumed.extra["last_eval_step"]
            resumed.restore(training.unwrap(self.model), self.optimizer, self.scheduler)
        self.metrics = self.files.metrics

    @property
    def step(self) -> int:
        return self.position.step

    def save_resume(self) -> None:
        extra = {"best": self.best, "last_eval_step": self.last_eval_step}
        self.files.save(
            training.unwrap(self.model), self.optimizer, self.scheduler, self.position, extra
        )

    def _init_checkpoint(self) -> tuple[Translator, dict[str, Any], Any] | None:
        """(model, config, tokenizer) of --init. Its architecture overrides --arch and the size
        options: the weights only fit the shapes they were trained with."""
        if self.cfg.init is None:
            return None
        model, config, tokenizer = load_translator(self.cfg.init)
        if config["arch"] != self.cfg.arch:
            log.warning("--init is a %s checkpoint; using that architecture", config["arch"])
            self.cfg.arch = config["arch"]
        return model, config, tokenizer

    def _tokenizer(self, texts: list[str]) -> Any:
        """The --init checkpoint's tokenizer (its ids are baked into the weights), else reuse
        --tokenizer, or train one on the main rank and share it through the out dir
        (every rank must use the same ids)."""
        if self.init is not None:
            return self.init[2]
        if self.cfg.tokenizer is not None:
            return tok.load_tokenizer(self.cfg.tokenizer)
        path = self.out / tok.TOKENIZER_FILE
        if self.cfg.run.resume and path.is_file():  # the interrupted run's ids
            return tok.load_tokenizer(path)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tok.train_joint_bpe(texts, self.cfg.vocab_size).save(str(path))
        training.barrier(self.ctx)
        return tok.load_tokenizer(path)

    # ---- training ---------------------------------------------------------------------------
    def train_step(self, src: list[list[int]], tgt: list[list[int]]) -> tuple[float, int]:
        """One update; returns (summed token loss, target tokens)."""
        batch = collate(src, tgt).to(self.device)
        with training.autocast(self.device):
            logits = self.model(batch.src, batch.tgt_in)  # (B, T, V)
        loss = self.loss_fn(logits.float().flatten(0, 1), batch.tgt_out.flatten())
        loss.backward()
        self.grad_norm = training.optimizer_update(
            self.model, self.optimizer, self.scheduler, self.cfg.clip_norm
        )
        self.position.step += 1
        ntok = batch.num_target_tokens
        return float(loss.detach()) * ntok, ntok

    def should_stop(self) -> bool:
        """Step cap or time budget; agreed across ranks so they leave the loop together."""
        stop = resume.step_cap_reached(self.step, self.cfg.run)
        budget = self.cfg.time_budget_minutes
        if budget is not None and time.monotonic() - self.start_time > budget * 60:
            stop = True
        if self.ctx.is_distributed:
            stop = training.all_reduce_sum([float(stop)], self.ctx)[0] > 0
        return stop

    def fit(self) -> dict[str, Any]:
        cfg, pos = self.cfg, self.position
        stop = pos.finished or resume.step_cap_reached(pos.step, cfg.run)
        while pos.epoch < cfg.epochs and not stop:
            epoch = pos.epoch + 1  # 1-based in the records
            batches = bucket_batches(
                [len(s) for s in self.train_src],
                [len(t) for t in self.train_tgt],
                cfg.max_tokens,
                shuffle=True,
                seed=cfg.seed * 1000 + epoch,
            )
            batches = shard_batches(batches, self.ctx.rank, self.ctx.world_size)
            self.model.train()
            bar = training.progress_bar(
                len(batches), f"epoch {epoch}", enabled=self.ctx.is_main and not cfg.no_progress
            )
            bar.update(pos.batches_in_epoch)
            loss_sum, tokens, window_start = 0.0, 0, time.monotonic()
            for indices in batches[pos.batches_in_epoch :]:  # a resumed epoch skips its start
                batch_loss, ntok = self.train_step(
                    [self.train_src[i] for i in indices], [self.train_tgt[i] for i in indices]
                )
                pos.batches_in_epoch += 1
                loss_sum, tokens = loss_sum + batch_loss, tokens + ntok
                bar.update(1)
                if self.step % cfg.log_every == 0:
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
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    eval_start = time.monotonic()
                    self.evaluate(epoch)
                    window_start += time.monotonic() - eval_start  # keep tokens/s about training
                if self.should_stop():
                    stop = True
                    break
                if self.files.save_due():
                    self.save_resume()
            bar.close()
            if not cfg.eval_every or stop or epoch == cfg.epochs:
                self.evaluate(epoch)
            if stop:
                log.info("stopping at step %d (step cap or time budget); --resume continues",
                         self.step)  # fmt: skip
                break
            pos.epoch, pos.batches_in_epoch = pos.epoch + 1, 0
            self.save_resume()
        pos.finished = pos.epoch >= cfg.epochs
        self.save_resume()
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
            self.cfg.max_tokens,
            shuffle=False,
        )
        loss_sum, tokens = 0.0, 0
        for indices in batches[self.ctx.rank :: self.ctx.world_size]:
            batch = collate(
                [self.dev_src_ids[i] for i in indices], [self.dev_tgt_ids[i] for i in indices]
            ).to(self.device)
            with training.autocast(self.device):
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
            with training.autocast(self.device):
                hyps = translate(
                    model,  # type: ignore[arg-type]
                    self.tokenizer,
                    self.dev_src,
                    self.cfg.max_length,
                    beam_size=self.cfg.dev_beam,
                    max_new_tokens=self.cfg.max_length,
                    batch_size=self.cfg.decode_batch_size,
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
                    "dev_beam": self.cfg.dev_beam,
                    "elapsed_s": round(time.monotonic() - self.start_time, 1),
                }
                self.save()
        training.barrier(self.ctx)
        self.model.train()

    def save(self) -> None:
        save_translator(
            self.out,
            training.unwrap(self.model),
            self.cfg.arch,
            self.tokenizer,
            self.cfg.max_length,
            extra={
                "generation": {
                    "beam_size": 4,
                    "max_new_tokens": self.cfg.max_length,
                    "length_penalty": 1.0,
                },
                "best": self.best,
                "train_args": {k: jsonable(v) for k, v in asdict(self.cfg).items()},
                "optimizer": {"lr": self.lr, "warmup": self.warmup, "betas": [0.9, 0.98]},
                "init": None
                if self.init is None
                else {
                    "checkpoint": str(self.cfg.init),
                    "best": self.init[1].get("best"),
                },
                "data": {"train_pairs": len(self.train_src), "dev_pairs": len(self.dev_src)},
                "world_size": self.ctx.world_size,
                "device": str(self.device),
            },
        )


def run(args: argparse.Namespace) -> int:
    cfg = from_args(TranslatorConfig, args)
    for name in ("train_src", "train_tgt", "dev_src", "dev_tgt"):
        path = getattr(cfg, name)
        if not path.is_file():
            print(f"error: --{name.replace('_', '-')} {path}: no such file")
            return 2
    if cfg.init is not None and not (cfg.init / "config.json").is_file():
        print(f"error: --init {cfg.init}: no translator checkpoint there (config.json missing)")
        return 2
    if cfg.tokenizer is not None and not cfg.tokenizer.is_file():
        print(f"error: --tokenizer {cfg.tokenizer}: no such file")
        return 2
    if resume.nothing_to_resume(cfg.run, cfg.out):
        return 0
    try:
        ctx = training.init_distributed(cfg.run.device, cfg.run.precision)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    training.seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    log_file = cfg.out / "train_log.txt"
    try:
        with training.log_to_file(log_file, enabled=ctx.is_main, append=cfg.run.resume):
            try:
                trainer = Trainer(cfg, ctx)
            except ValueError as e:
                print(f"error: {e}")
                return 2
            best = trainer.fit()
        if ctx.is_main:
            print(
                f"best dev BLEU {best.get('dev_bleu', float('nan')):.2f} at step "
                f"{best.get('step')} -> {cfg.out}"
            )
        return 0
    finally:
        training.cleanup_distributed(ctx)
