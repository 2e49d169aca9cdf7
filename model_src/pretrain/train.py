"""Masked-LM + next-sentence-prediction pretraining (BERT's objective) on raw text.

`python -m model_src pretrain --corpus FILE --out DIR [--init DIR] [--tokenizer PATH] ...`

The data (pretrain/data.py): one sentence per line, blank lines between documents; NSP pairs
re-drawn every epoch, masks drawn afresh for every batch. With --init the run continues
pretraining an HF BERT checkpoint (domain adaptation); without it a new encoder of the
--hidden-size/--num-layers/... shape is trained from scratch on the --tokenizer vocabulary (e.g.
one from `tokenizer train`).

The output directory is an HF BERT checkpoint (config.json, model.safetensors with the pooler
and MLM/NSP heads, tokenizer.json, vocab.txt), so it is a valid --init for fine-tuning and for
further pretraining, plus metrics.jsonl, training_curve.png, pretrain_args.json and the resume
state (resume.pt) that `--resume` continues from.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from model_src.bert.heads import IGNORE_INDEX, BertForPretraining, PretrainingOutput
from model_src.bert.hf_checkpoint import (
    load_pretrained_bert,
    load_pretraining_heads,
    resolve_checkpoint_dir,
    save_hf_bert,
)
from model_src.bert.model import BertConfig
from model_src.bert.tokenization import CLS, MASK, PAD, SEP, UNK, load_tokenizer, special_token_id
from model_src.common import resume, training
from model_src.common.checkpoint import jsonable
from model_src.common.model_card import write_pretraining_card
from model_src.common.options import add_options, from_args, option
from model_src.pretrain.data import (
    PretrainingCollator,
    build_nsp_pairs,
    pair_batches,
    read_documents,
    split_documents,
)

logger = logging.getLogger(__name__)

_SCRATCH = "from-scratch encoder shape (without --init)"


@dataclass(kw_only=True)
class PretrainConfig:
    """A pretraining run (each field is also an option); defaults suit continued pretraining of
    MiniLM-L6 on one GPU."""

    corpus: Path = option(help="one sentence a line, blank lines between documents")
    out: Path = option(help="output checkpoint directory")
    init: str | None = option(
        None, 'HF BERT directory to continue from ("default": the packaged MiniLM-L6); omit to '
        "train from scratch",
    )  # fmt: skip
    tokenizer: Path | None = option(
        None, "tokenizer.json, vocab.txt or a directory holding one (default: --init's)"
    )
    steps: int = option(10_000, "optimizer steps", minimum=1)
    batch_size: int = option(32, "sentence pairs per step and process", minimum=1)
    lr: float = option(1e-4, "peak learning rate")  # BERT's pretraining peak
    weight_decay: float = option(
        0.01, "AdamW decay of weight matrices"
    )  # BERT's value, matrices only
    warmup_ratio: float = option(0.06, "fraction of the steps spent warming up")
    max_grad_norm: float = option(1.0, "global gradient-norm clip; <= 0: off")
    max_length: int = option(128, "tokens per pair incl. [CLS]/[SEP]", minimum=8)
    mlm_probability: float = option(0.15, "share of tokens masked")  # BERT's masking rate
    dev_fraction: float = option(0.05, "documents held out for a dev loss (needs >= 20)")
    eval_every: int = option(500, "steps between dev evaluations (and at the end)", minimum=1)
    log_every: int = option(50, "steps between train records", minimum=1)
    seed: int = option(42, "pairs, masks and dropout")
    # From-scratch encoder shape (ignored with --init); a small BERT by default.
    hidden_size: int = option(256, group=_SCRATCH)
    num_layers: int = option(4, group=_SCRATCH)
    num_heads: int = option(4, group=_SCRATCH)
    intermediate_size: int = option(1024, group=_SCRATCH)
    dropout: float = option(0.1, group=_SCRATCH)
    run: resume.RunControl = option(default_factory=resume.RunControl)  # device, resume, step cap

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError("--mlm-probability must be between 0 and 1")


def build_model(cfg: PretrainConfig, tokenizer: Tokenizer) -> BertForPretraining:
    """BertForPretraining from --init (encoder + any heads it has) or freshly initialised."""
    vocab_size = tokenizer.get_vocab_size()
    if cfg.init is None:
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=max(512, cfg.max_length),
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=special_token_id(tokenizer, PAD),
        )
        return BertForPretraining(config)
    init_dir = resolve_checkpoint_dir(cfg.init)
    encoder = load_pretrained_bert(init_dir)
    if vocab_size > encoder.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but {init_dir} embeds only "
            f"{encoder.config.vocab_size}; use the checkpoint's own tokenizer"
        )
    if cfg.max_length > encoder.config.max_position_embeddings:
        raise ValueError(
            f"--max-length {cfg.max_length} exceeds the checkpoint's "
            f"{encoder.config.max_position_embeddings} positions"
        )
    model = BertForPretraining(encoder.config, encoder)
    fresh = load_pretraining_heads(model, init_dir)
    if fresh:
        logger.info("%s has no %s; those heads start fresh", init_dir, ", ".join(fresh))
    return model


# --- Training -----------------------------------------------------------------------------------


@dataclass
class _Totals:
    """Running sums between two metric records."""

    loss: float = 0.0
    mlm_loss: float = 0.0
    nsp_loss: float = 0.0
    mlm_correct: int = 0
    mlm_total: int = 0
    nsp_correct: int = 0
    nsp_total: int = 0
    batches: int = 0

    def add(self, out: PretrainingOutput, batch: dict[str, torch.Tensor]) -> None:
        assert out.loss is not None and out.mlm_loss is not None and out.nsp_loss is not None
        self.loss += out.loss.item()
        self.mlm_loss += out.mlm_loss.item()
        self.nsp_loss += out.nsp_loss.item()
        targets = batch["mlm_labels"][batch["mlm_labels"] != IGNORE_INDEX]
        self.mlm_correct += int((out.mlm_logits.argmax(-1) == targets).sum())
        self.mlm_total += targets.numel()
        self.nsp_correct += int((out.nsp_logits.argmax(-1) == batch["nsp_labels"]).sum())
        self.nsp_total += batch["nsp_labels"].numel()
        self.batches += 1

    def record(self) -> dict[str, float]:
        n = max(self.batches, 1)
        return {
            "loss": self.loss / n,
            "mlm_loss": self.mlm_loss / n,
            "nsp_loss": self.nsp_loss / n,
            "mlm_accuracy": self.mlm_correct / max(self.mlm_total, 1),
            "nsp_accuracy": self.nsp_correct / max(self.nsp_total, 1),
        }


@torch.no_grad()
def evaluate(
    model: BertForPretraining,
    batches: Sequence[dict[str, torch.Tensor]],
    device: torch.device,
) -> dict[str, float]:
    """Mean losses and accuracies on fixed (pre-masked) dev batches."""
    was_training = model.training
    model.eval()
    totals = _Totals()
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with training.autocast(device):
            out = model(**batch)
        totals.add(out, batch)
    model.train(was_training)
    return totals.record()


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run pretraining; returns the last train and dev records.

    Under torchrun each rank trains on its share of every epoch (DDP); rank 0 logs its own
    train metrics, evaluates dev and writes the checkpoint.
    """
    ctx = training.init_distributed(cfg.run.device, cfg.run.precision)
    try:
        with training.log_to_file(
            cfg.out / "train_log.txt", enabled=ctx.is_main, append=cfg.run.resume
        ):
            return Trainer(cfg, ctx).fit()
    finally:
        training.cleanup_distributed(ctx)


def _tokenizer_source(cfg: PretrainConfig) -> Path:
    if cfg.tokenizer is not None:
        return cfg.tokenizer
    if cfg.init is not None:
        return resolve_checkpoint_dir(cfg.init)
    raise ValueError("training from scratch needs --tokenizer (e.g. from `tokenizer train`)")


class Trainer:
    """One pretraining run: builds data, model and optimiser; `fit` is the loop."""

    def __init__(self, cfg: PretrainConfig, ctx: training.DistContext) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        training.seed_everything(cfg.seed + ctx.rank)
        self.tokenizer = load_tokenizer(_tokenizer_source(cfg))
        for token in (PAD, UNK, CLS, SEP, MASK):
            special_token_id(self.tokenizer, token)  # fail before training, not mid-way

        documents = read_documents(cfg.corpus)
        self.train_docs, dev_docs = split_documents(documents, cfg.dev_fraction, cfg.seed)
        if len(self.train_docs) < 2:
            raise ValueError(
                f"{cfg.corpus}: found {len(documents)} document(s); NSP needs at least two, "
                "separated by a blank line"
            )
        logger.info("%d train / %d dev documents, %d sentences", len(self.train_docs),
                    len(dev_docs), sum(map(len, documents)))  # fmt: skip

        self.model = build_model(cfg, self.tokenizer).to(self.device).train()
        self.mask_generator = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank)
        self.collate = PretrainingCollator(
            self.tokenizer, cfg.max_length, self.mask_generator, cfg.mlm_probability,
            vocab_size=self.tokenizer.get_vocab_size(),
        )  # fmt: skip
        self.dev_batches: list[dict[str, torch.Tensor]] = []
        if dev_docs:  # fixed pairs and masks, so dev numbers are comparable across steps
            dev_collate = PretrainingCollator(
                self.tokenizer, cfg.max_length, torch.Generator().manual_seed(cfg.seed),
                cfg.mlm_probability,
            )  # fmt: skip
            dev_pairs = build_nsp_pairs(dev_docs, random.Random(cfg.seed))
            self.dev_batches = [
                dev_collate(dev_pairs[i : i + cfg.batch_size])
                for i in range(0, len(dev_pairs), cfg.batch_size)
            ]
        self.ddp_model = training.wrap_ddp(self.model, ctx)
        self.optimizer = training.build_adamw(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = training.linear_warmup_decay(
            self.optimizer, round(cfg.warmup_ratio * cfg.steps), cfg.steps
        )
        self.position, self.last = resume.Position(), {}
        self.files = resume.RunFiles(cfg.out, cfg.run, ctx.is_main)
        if (resumed := self.files.take_resumed()) is not None:
            self.position, self.last = resumed.position, resumed.extra["last"]
            generators = {"masks": self.mask_generator}
            resumed.restore(self.model, self.optimizer, self.scheduler, generators)
        self.metrics = self.files.metrics

    def save_resume(self) -> None:
        extra, generators = {"last": self.last}, {"masks": self.mask_generator}
        self.files.save(
            self.model, self.optimizer, self.scheduler, self.position, extra, generators
        )

    def fit(self) -> dict[str, Any]:
        cfg, ctx, pos, device = self.cfg, self.ctx, self.position, self.device
        batches = pair_batches(self.train_docs, cfg.batch_size, cfg.seed, ctx)
        for _ in range(pos.step):  # the data position: batches the resumed run already used
            next(batches)
        bar = training.progress_bar(cfg.steps, "pretrain", enabled=ctx.is_main)
        bar.update(pos.step)
        totals, window_start, examples = _Totals(), time.monotonic(), 0
        while pos.step < cfg.steps and not resume.step_cap_reached(pos.step, cfg.run):
            batch = {
                k: v.to(device, non_blocking=True) for k, v in self.collate(next(batches)).items()
            }
            with training.autocast(device):
                out = self.ddp_model(**batch)
            assert out.loss is not None
            out.loss.backward()
            grad_norm = training.optimizer_update(self.model, self.optimizer, self.scheduler,
                                         cfg.max_grad_norm)  # fmt: skip
            pos.step += 1
            step = pos.step
            totals.add(out, batch)
            examples += batch["input_ids"].size(0)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                ex_per_s = examples * ctx.world_size / max(time.monotonic() - window_start, 1e-9)
                record = totals.record()
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"loss became {record['loss']} at step {step}")
                self.last["train"] = record
                self.metrics.log(
                    step=step, split="train", lr=self.scheduler.get_last_lr()[0],
                    grad_norm=grad_norm, examples_per_s=round(ex_per_s, 1), **record,
                )  # fmt: skip
                bar.set_postfix(loss=f"{record['loss']:.3f}", ex_per_s=f"{ex_per_s:.0f}")
                totals, window_start, examples = _Totals(), time.monotonic(), 0
            if (
                self.dev_batches
                and ctx.is_main
                and (step % cfg.eval_every == 0 or step == cfg.steps)
            ):
                self.last["dev"] = evaluate(self.model, self.dev_batches, device)
                self.metrics.log(step=step, split="dev", **self.last["dev"])
                logger.info("step %d dev %s", step, _fmt(self.last["dev"]))
            if self.files.save_due():
                self.save_resume()
        bar.close()
        pos.finished = pos.step >= cfg.steps
        if not pos.finished:
            logger.info("stopping at step %d (--max-steps); --resume continues", pos.step)
        self.save_resume()
        if ctx.is_main and pos.finished:
            save_hf_bert(self.model.to("cpu").eval(), self.model.config, cfg.out, self.tokenizer)
            args_record = {k: jsonable(v) for k, v in asdict(cfg).items()}
            (cfg.out / "pretrain_args.json").write_text(json.dumps(args_record, indent=2) + "\n")
            write_pretraining_card(cfg.out, args_record, self.last.get("dev"))
            training.plot_training_curves(cfg.out / "metrics.jsonl", cfg.out / "training_curve.png")
            logger.info("wrote %s", cfg.out)
        return self.last


def _fmt(record: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in record.items())


# --- CLI ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, PretrainConfig)


def run(args: argparse.Namespace) -> int:
    """`python -m model_src pretrain`; bad input is a one-line error and exit code 2."""
    try:
        cfg = from_args(PretrainConfig, args)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    if not cfg.corpus.is_file():
        print(f"error: corpus file not found: {cfg.corpus}")
        return 2
    if resume.nothing_to_resume(cfg.run, cfg.out):
        return 0
    try:
        last = train(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}")
        return 2
    summary = {split: _fmt(record) for split, record in last.items()}
    print(f"wrote {cfg.out} " + " | ".join(f"{k}: {v}" for k, v in summary.items()))
    return 0
