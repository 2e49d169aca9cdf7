"""Fine-tune a pretrained BERT as a sentence (sentiment) or sentence-pair (NLI) classifier.

`python -m model_src train classifier|nli --train FILE [FILE ...] --dev FILE --out DIR ...`

The recipe is BERT's: AdamW (no decay on biases/LayerNorm), linear warm-up then linear decay,
global gradient-norm clipping, cross-entropy on the [CLS] head. Batches are length-bucketed to
cut padding. Dev accuracy is measured every --eval-every optimizer steps and at each epoch end;
the checkpoint in --out (classifier/checkpoint.py) is always the best one so far, and
--out/resume.pt lets `--resume` continue an interrupted run exactly (common/resume.py). Launched
by torchrun the same command trains data-parallel (DDP; nccl on GPUs, gloo on CPU); --batch-size
is per process and per micro-batch, so one optimizer step sees batch_size * grad_accum *
world_size examples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model_src.bert.tokenization import load_tokenizer
from model_src.classifier.checkpoint import build_classifier, load_classifier, save_classifier
from model_src.classifier.config import FinetuneConfig
from model_src.classifier.data import DataError, label_counts, read_labelled
from model_src.classifier.dataset import Collator, EncodedDataset, LengthBucketBatchSampler
from model_src.classifier.distill import (
    Teacher,
    WithSoftLabels,
    distillation_loss_sum,
    teacher_probabilities,
)
from model_src.classifier.evaluate import evaluate_dataset
from model_src.common import resume, training
from model_src.common.batching import chunked
from model_src.common.checkpoint import jsonable, load_checkpoint_config
from model_src.common.model_card import checkpoint_card, write_model_card
from model_src.common.options import add_options, from_args

log = logging.getLogger(__name__)


# --- one optimizer step -------------------------------------------------------------------------


def train_step(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    max_grad_norm: float,
    device: torch.device,
    distill_weight: float = 0.0,
    distill_temperature: float = 1.0,
) -> tuple[float, float]:
    """Accumulate gradients over micro-batches, clip, step; returns (mean loss, grad norm).

    Each micro-batch's summed loss is divided by the examples of the whole step, so the update
    equals that of one batch holding all of them, whatever the micro-batch sizes. Under DDP the
    all-reduce runs only on the last micro-batch (no_sync on the others). Batches that carry
    `soft_labels` mix in the distillation term with `distill_weight`.
    """
    total = sum(int(b["labels"].numel()) for b in micro_batches)
    loss_value = 0.0
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        last = i == len(micro_batches) - 1
        sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if isinstance(model, DistributedDataParallel) and not last:
            sync = model.no_sync()
        with sync:
            with training.autocast(device):
                out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            # float(): under bf16 autocast the loss is still reduced in fp32.
            loss = F.cross_entropy(out.logits.float(), batch["labels"], reduction="sum") / total
            if distill_weight > 0 and "soft_labels" in batch:
                soft = distillation_loss_sum(out.logits, batch["soft_labels"], distill_temperature)
                loss = (1.0 - distill_weight) * loss + distill_weight * soft / total
            loss.backward()
        loss_value += float(loss.detach())
    return loss_value, training.optimizer_update(model, optimizer, scheduler, max_grad_norm)


# --- data -------------------------------------------------------------------------------------


def _teacher_targets(
    cfg: FinetuneConfig, examples: Sequence[Any], labels: Sequence[str], device: torch.device
) -> torch.Tensor:
    """The teachers' averaged probabilities on the train examples; the labels must agree."""
    teachers = []
    for directory in cfg.teachers:
        try:
            model, config, tokenizer = load_classifier(directory)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"--teacher {directory}: not a fine-tuned checkpoint ({e})") from e
        if list(config["labels"]) != list(labels):
            raise DataError(
                f"--teacher {directory}: labels {config['labels']} differ from the data's "
                f"{list(labels)}"
            )
        pad_id = model.encoder.config.pad_token_id
        teachers.append(Teacher(model, tokenizer, int(config["max_length"]), pad_id))
    started = time.monotonic()
    probs = teacher_probabilities(
        teachers, examples, len(labels), cfg.distill_temperature, cfg.eval_batch_size, device
    )
    agree = float((probs.argmax(-1) == torch.tensor([e.label for e in examples])).float().mean())
    log.info(
        "%d teacher(s) scored %d train examples in %.0f s (their argmax matches the gold label "
        "on %.1f%%)", len(teachers), len(examples), time.monotonic() - started, 100 * agree,
    )  # fmt: skip
    return probs


def _subsample(examples: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset in file order (the first N rows of a file may be one label)."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


# --- the run ------------------------------------------------------------------------------------


@dataclass
class _Best:
    step: int = -1
    dev_accuracy: float = -1.0
    dev_macro_f1: float = 0.0
    epoch: float = 0.0


class Trainer:
    """One fine-tuning run: builds data, model and optimiser; `fit` is the loop."""

    def __init__(self, cfg: FinetuneConfig, ctx: training.DistContext) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        reader = replace(cfg.reader, task=cfg.task)
        train_parts = [read_labelled(path, reader) for path in cfg.train]
        dev_data = read_labelled(cfg.dev, reader)
        self.labels = train_parts[0].labels  # one reader config: the same names in every file
        for part in train_parts:
            counts = part.label_counts()
            log.info("train file %s: %d examples %s", part.path, len(part.examples), counts)
        all_train = [example for part in train_parts for example in part.examples]
        train_examples = _subsample(all_train, cfg.max_train_examples, cfg.seed)
        log.info(
            "train %s: %d examples %s; dev %s: %d examples %s",
            " + ".join(map(str, cfg.train)), len(train_examples),
            label_counts(train_examples, self.labels),
            cfg.dev, len(dev_data.examples), dev_data.label_counts(),
        )  # fmt: skip

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # The same seed on every rank: an identical head init (DDP checks it).
        training.seed_everything(cfg.seed)
        self.model, self.init_dir = build_classifier(cfg.init, len(self.labels), cfg.dropout)
        if cfg.freeze_embeddings:
            self.model.encoder.embeddings.word.weight.requires_grad_(False)
        torch.manual_seed(cfg.seed + ctx.rank)  # from here on (dropout) each rank draws its own
        self.tokenizer = load_tokenizer(self.init_dir, max_length=cfg.max_length)
        self.pad_id = self.model.encoder.config.pad_token_id
        encoded_train = EncodedDataset(train_examples, self.tokenizer, cfg.max_length)
        self.train_set: EncodedDataset | WithSoftLabels = encoded_train
        if cfg.teachers:
            soft = _teacher_targets(cfg, train_examples, self.labels, ctx.device)
            self.train_set = WithSoftLabels(encoded_train, soft)
        self.dev_set = EncodedDataset(dev_data.examples, self.tokenizer, cfg.max_length)
        self.sampler = LengthBucketBatchSampler(
            self.train_set.lengths, cfg.batch_size, shuffle=True, seed=cfg.seed,
            num_replicas=ctx.world_size, rank=ctx.rank,
        )  # fmt: skip
        self.collate = Collator(self.pad_id)

        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        warmup_steps = round(cfg.warmup_ratio * self.total_steps)
        self.model.to(self.device)
        self.optimizer = training.build_adamw(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = training.linear_warmup_decay(
            self.optimizer, warmup_steps, self.total_steps
        )
        self.ddp_model = training.wrap_ddp(self.model, ctx)
        log.info(
            "%d optimizer steps (%d/epoch, %d warm-up), %d examples per step on %s x%d",
            self.total_steps, self.steps_per_epoch, warmup_steps,
            cfg.batch_size * cfg.grad_accum * ctx.world_size, self.device, ctx.world_size,
        )  # fmt: skip
        self.train_args = {k: jsonable(v) for k, v in asdict(cfg).items()}
        self.position, self.best = resume.Position(), _Best()
        # Throughput of this invocation (a resumed run counts from its restart); eval excluded.
        self.examples_seen, self.eval_seconds = 0, 0.0
        self.files = resume.RunFiles(cfg.out, cfg.run, ctx.is_main)
        if (resumed := self.files.take_resumed()) is not None:
            self.position, self.best = resumed.position, _Best(**resumed.extra["best"])
            resumed.restore(self.model, self.optimizer, self.scheduler)
        self.metrics = self.files.metrics

    def save_resume(self) -> None:
        extra = {"best": asdict(self.best)}
        self.files.save(self.model, self.optimizer, self.scheduler, self.position, extra)

    def evaluate_and_keep(self, step: int, epoch: float) -> None:
        """Dev metrics; a new best is saved as the checkpoint in --out."""
        cfg, ctx = self.cfg, self.ctx
        eval_started = time.monotonic()
        result = evaluate_dataset(
            training.unwrap(self.ddp_model), self.dev_set, self.labels, cfg.eval_batch_size,
            self.device, ctx, self.pad_id,
        )  # fmt: skip
        self.metrics.log(
            split="dev", step=step, epoch=round(epoch, 3), loss=result["loss"],
            accuracy=result["accuracy"], macro_f1=result["macro_f1"],
        )  # fmt: skip
        improved = result["accuracy"] > self.best.dev_accuracy
        log.info(
            "step %d (epoch %.2f): dev accuracy %.4f macro-F1 %.4f loss %.4f%s",
            step, epoch, result["accuracy"], result["macro_f1"], result["loss"],
            " (best so far, saved)" if improved else "",
        )  # fmt: skip
        if improved:
            self.best = _Best(step, result["accuracy"], result["macro_f1"], round(epoch, 3))
            if ctx.is_main:
                save_classifier(
                    cfg.out, self.model, self.tokenizer, cfg.task, self.labels, cfg.max_length,
                    init=str(self.init_dir), train_args=self.train_args, best=asdict(self.best),
                )  # fmt: skip
        if ctx.is_main:  # a curve to look at while a long run goes on
            training.plot_training_curves(cfg.out / "metrics.jsonl", cfg.out / "training_curve.png")
        training.barrier(ctx)  # no rank runs ahead while the main one writes
        self.eval_seconds += time.monotonic() - eval_started

    def _train_one_step(self, group: list[dict[str, torch.Tensor]], bar: Any) -> None:
        cfg, pos = self.cfg, self.position
        loss, grad_norm = train_step(
            self.ddp_model, group, self.optimizer, self.scheduler, cfg.max_grad_norm,
            self.device, cfg.distill_weight, cfg.distill_temperature,
        )  # fmt: skip
        pos.step += 1
        pos.batches_in_epoch += len(group)
        self.examples_seen += sum(int(b["labels"].numel()) for b in group) * self.ctx.world_size
        elapsed = time.monotonic() - self.started - self.eval_seconds
        ex_per_s = self.examples_seen / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{ex_per_s:.1f}")
        if pos.step % cfg.log_every == 0 or pos.step == 1:
            self.metrics.log(
                split="train", step=pos.step, epoch=round(pos.step / self.steps_per_epoch, 3),
                loss=loss, lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                ex_per_s=ex_per_s,
            )  # fmt: skip
        if cfg.eval_every and pos.step % cfg.eval_every == 0 and pos.step % self.steps_per_epoch:
            self.evaluate_and_keep(pos.step, pos.step / self.steps_per_epoch)

    def fit(self) -> dict[str, Any]:
        """Train to the end (or --max-steps); returns the run's summary."""
        cfg, pos = self.cfg, self.position
        self.started = time.monotonic()
        bar = training.progress_bar(self.total_steps, f"train {cfg.task}", enabled=self.ctx.is_main)
        bar.update(pos.step)
        self.ddp_model.train()
        stopped = False
        while pos.epoch < cfg.epochs and not pos.finished:
            self.sampler.set_epoch(pos.epoch)
            # Micro-batches of this epoch not yet consumed (all of them unless resuming).
            batches = list(self.sampler)[pos.batches_in_epoch :]
            for indices in chunked(batches, cfg.grad_accum):
                if resume.step_cap_reached(pos.step, cfg.run):
                    stopped = True
                    break
                group = [self.collate([self.train_set[i] for i in batch]) for batch in indices]
                self._train_one_step(group, bar)
                if self.files.save_due():
                    self.save_resume()
            if stopped:
                log.info("stopping at step %d (--max-steps); --resume continues", pos.step)
                break
            self.evaluate_and_keep(pos.step, pos.epoch + 1.0)
            pos.epoch, pos.batches_in_epoch = pos.epoch + 1, 0
            self.save_resume()
        bar.close()
        pos.finished = not stopped
        self.save_resume()
        return self.summary(time.monotonic() - self.started)

    def summary(self, wall: float) -> dict[str, Any]:
        summary = {
            **asdict(self.best),
            "steps": self.position.step,
            "wall_seconds": round(wall, 1),
            "eval_seconds": round(self.eval_seconds, 1),
            "train_ex_per_s": round(self.examples_seen / max(wall - self.eval_seconds, 1e-9), 1),
            "device": str(self.device),
            "world_size": self.ctx.world_size,
        }
        out = self.cfg.out
        if self.ctx.is_main and (out / "config.json").is_file():
            # The run's totals join the best checkpoint's config (metrics.jsonl stays per-step).
            config = load_checkpoint_config(out)
            config["training"] = summary
            (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            write_model_card(out / "README.md", checkpoint_card(config))
        log.info(
            "done in %.0f s: best dev accuracy %.4f at step %d; checkpoint %s",
            wall, self.best.dev_accuracy, self.best.step, out,
        )  # fmt: skip
        return summary


def finetune(cfg: FinetuneConfig, ctx: training.DistContext) -> dict[str, Any]:
    """Train, evaluating and keeping the best checkpoint in cfg.out; returns the best record."""
    return Trainer(cfg, ctx).fit()


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # `train classifier` reads single texts: no second-text column to point at (cli.py sets task).
    single_text = parser.get_default("task") == "classifier"
    add_options(parser, FinetuneConfig, skip=("pair_column",) if single_text else ())


def run(args: argparse.Namespace) -> int:
    try:
        cfg = from_args(FinetuneConfig, args)
        ctx = training.init_distributed(cfg.run.device, cfg.run.precision)
    except (DataError, ValueError) as e:  # bad options, --device cuda without a GPU
        print(f"error: {e}", file=sys.stderr)
        return 2
    if resume.nothing_to_resume(cfg.run, cfg.out):
        training.cleanup_distributed(ctx)
        return 0
    if not ctx.is_main:  # one copy of the progress messages is enough
        logging.getLogger("model_src").setLevel(logging.WARNING)
    try:
        log_file = cfg.out / "train_log.txt"
        with training.log_to_file(log_file, enabled=ctx.is_main, append=cfg.run.resume):
            summary = finetune(cfg, ctx)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        training.cleanup_distributed(ctx)
    if ctx.is_main:
        print(
            f"best dev accuracy {summary['dev_accuracy']:.4f} (macro-F1 "
            f"{summary['dev_macro_f1']:.4f}) at step {summary['step']}; checkpoint in {cfg.out}"
        )
    return 0
