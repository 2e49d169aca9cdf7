"""Fine-tune a pretrained BERT as a sentence (sentiment) or sentence-pair (NLI) classifier.

`python -m model_src train classifier|nli --train FILE --dev FILE --out DIR [--init DIR] ...`

The recipe is BERT's: AdamW (no decay on biases/LayerNorm), linear warm-up then linear decay,
global gradient-norm clipping, cross-entropy on the [CLS] head. Batches are length-bucketed to
cut padding. Dev accuracy is measured every --eval-every optimizer steps and at each epoch end;
the checkpoint in --out is always the best one so far. Launched by torchrun the same command
trains data-parallel (DDP; nccl on GPUs, gloo on CPU); --batch-size is per process and per
micro-batch, so one optimizer step sees batch_size * grad_accum * world_size examples.

The checkpoint layout (config.json, model.safetensors, tokenizer.json, metrics.jsonl,
training_curve.png, train_log.txt) is fixed in notes/contracts.md; `load_classifier` reads it.
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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model_src.bert import BertConfig, BertModel
from model_src.checkpoint import (
    jsonable,
    load_checkpoint_config,
    load_state_dict,
    save_state_checkpoint,
)
from model_src.data import (
    Collator,
    DataError,
    EncodedDataset,
    LengthBucketBatchSampler,
    ReaderConfig,
    add_reader_arguments,
    label_counts,
    read_labelled,
    reader_config_from_args,
)
from model_src.distill import Teacher, WithSoftLabels, distillation_loss_sum, teacher_probabilities
from model_src.evaluate import evaluate_dataset
from model_src.heads import SequenceClassifier
from model_src.hf_checkpoint import (
    load_pretrained_bert,
    resolve_checkpoint_dir,
    save_tokenizer_files,
)
from model_src.hf_classifier import (
    hf_classifier_config,
    hf_classifier_state,
    native_classifier_state,
)
from model_src.model_card import checkpoint_card, write_model_card
from model_src.tokenization import load_tokenizer
from model_src.training import (
    DistContext,
    MetricsLogger,
    autocast,
    barrier,
    build_adamw,
    cleanup_distributed,
    clip_grad,
    init_distributed,
    linear_warmup_decay,
    plot_training_curves,
    progress_bar,
    seed_everything,
    unwrap,
    wrap_ddp,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "nlpserve-classifier"
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_TASK = {"classifier": "text-classification", "nli": "text-pair-classification"}
TASK_OF_CHECKPOINT = {v: k for k, v in CHECKPOINT_TASK.items()}


@dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run; the defaults are the ones we train MiniLM-L6 with."""

    task: str = "classifier"  # "classifier" (one text) or "nli" (premise/hypothesis pair)
    # One or more labelled files, read in order and concatenated (e.g. a second NLI corpus).
    train: tuple[Path, ...] = (Path("train.tsv"),)
    dev: Path = Path("dev.tsv")
    out: Path = Path("runs/classifier")
    init: str | None = None  # HF BERT dir; None: the packaged MiniLM-L6
    epochs: int = 3  # BERT paper: 2-4 epochs suffice for GLUE-sized sets
    batch_size: int = 32  # per process and micro-batch; BERT paper: 16 or 32
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5  # peak; small models (6 layers, 384 wide) like the high end of BERT's range
    weight_decay: float = 0.01  # BERT's value, on weight matrices only
    warmup_ratio: float = 0.1  # fraction of all optimizer steps spent warming up
    max_grad_norm: float = 1.0  # global norm clip; <= 0 turns clipping off
    max_length: int = 128  # tokens incl. [CLS]/[SEP]; SST-2/SNLI sentences fit in 128
    eval_every: int = 500  # optimizer steps between dev evaluations (0: only at epoch ends)
    log_every: int = 10  # optimizer steps between train-loss records in metrics.jsonl
    eval_batch_size: int = 128  # no gradients at eval time, so bigger batches fit
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_train_examples: int | None = None  # a random subset of the train file (quick runs)
    dropout: float | None = None  # encoder + head dropout; None: the checkpoint's (0.1)
    freeze_embeddings: bool = False  # keep word embeddings fixed: ~25% faster steps on CPU
    threads: int | None = None  # torch intra-op threads; None: torch's default (all cores)
    # Distillation (model_src.distill): fine-tuned checkpoints whose averaged probabilities on
    # the train set join the gold labels as targets, with this weight and temperature.
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    reader: ReaderConfig = field(default_factory=ReaderConfig)  # columns, label names, ...


# --- model ------------------------------------------------------------------------------------


def build_classifier(
    init: str | Path | None, num_labels: int, dropout: float | None = None
) -> tuple[SequenceClassifier, Path]:
    """A classifier to fine-tune and the resolved init dir.

    `init` is a pretrained BERT (HF layout: a fresh head on its encoder) or one of our own
    fine-tuned checkpoints (continued training: its encoder, and its head too when the label
    count matches, e.g. a second stage at a lower learning rate).
    A dropout override rebuilds the encoder with that rate (rates are fixed at construction).
    """
    init_dir = resolve_checkpoint_dir(init)
    head_state: dict[str, torch.Tensor] | None = None
    if _is_classifier_checkpoint(init_dir):
        previous, _, _ = load_classifier(init_dir)
        encoder = previous.encoder
        if previous.classifier.out_features == num_labels:
            head_state = previous.classifier.state_dict()
    else:
        encoder = load_pretrained_bert(init_dir)
    head_dropout = 0.1
    if dropout is not None:
        config = replace(
            encoder.config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
        rebuilt = BertModel(config)
        rebuilt.load_state_dict(encoder.state_dict())
        encoder, head_dropout = rebuilt, dropout
    model = SequenceClassifier(encoder, num_labels, dropout=head_dropout)
    if head_state is not None:
        model.classifier.load_state_dict(head_state)
    return model.train(), init_dir


def _is_classifier_checkpoint(directory: Path) -> bool:
    """True for one of our fine-tuned checkpoints; False for an HF BERT directory."""
    try:
        return bool(load_checkpoint_config(directory).get("format") == CHECKPOINT_FORMAT)
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def load_classifier(
    directory: str | Path,
) -> tuple[SequenceClassifier, dict[str, Any], Tokenizer]:
    """(model in eval mode, config.json dict, tokenizer truncating to the trained max_length)."""
    directory = Path(directory)
    config = load_checkpoint_config(directory)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory}: not a {CHECKPOINT_FORMAT} checkpoint")
    encoder = BertModel(BertConfig.from_dict(config["encoder"]))
    model = SequenceClassifier(
        encoder, len(config["labels"]), dropout=config.get("classifier_dropout", 0.1)
    )
    state = native_classifier_state(load_state_dict(directory), encoder.config, str(directory))
    model.load_state_dict(state, strict=True)
    tokenizer = load_tokenizer(directory / "tokenizer.json", max_length=int(config["max_length"]))
    return model.eval(), config, tokenizer


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
            with autocast(device):
                out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            # float(): under bf16 autocast the loss is still reduced in fp32.
            loss = F.cross_entropy(out.logits.float(), batch["labels"], reduction="sum") / total
            if distill_weight > 0 and "soft_labels" in batch:
                soft = distillation_loss_sum(
                    out.logits, batch["soft_labels"], distill_temperature
                )  # fmt: skip
                loss = (1.0 - distill_weight) * loss + distill_weight * soft / total
            loss.backward()
        loss_value += float(loss.detach())
    grad_norm = clip_grad(model, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm


def grouped(loader: DataLoader, size: int) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Micro-batches in groups of `size` (the last group of an epoch may be smaller)."""
    group: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


# --- the run ------------------------------------------------------------------------------------


@dataclass
class _Best:
    step: int = -1
    dev_accuracy: float = -1.0
    dev_macro_f1: float = 0.0
    epoch: float = 0.0


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


def save_classifier(
    out_dir: Path,
    model: SequenceClassifier,
    tokenizer: Tokenizer,
    task: str,
    labels: Sequence[str],
    max_length: int,
    **extra: Any,
) -> None:
    """Write a classifier checkpoint (layout in notes/contracts.md); `extra` keys (init,
    train_args, best, ...) go into config.json as they are."""
    if task not in CHECKPOINT_TASK:
        raise ValueError(f"task must be one of {list(CHECKPOINT_TASK)}, not {task!r}")
    if len(labels) != model.classifier.out_features:
        raise ValueError(f"{len(labels)} label names for {model.classifier.out_features} outputs")
    # HF keys first, ours after: the directory also loads in transformers (model_src.hf_classifier)
    config = {
        **hf_classifier_config(model.encoder.config, list(labels), model.dropout.p),
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "task": CHECKPOINT_TASK[task],
        "labels": list(labels),
        "max_length": max_length,
        "encoder": asdict(model.encoder.config),
        "classifier_dropout": model.dropout.p,
        **extra,
    }
    save_state_checkpoint(out_dir, hf_classifier_state(model), config)
    # tokenizer.json without truncation/padding (config.json's max_length says where to cut),
    # plus vocab.txt and tokenizer_config.json for transformers' AutoTokenizer.
    save_tokenizer_files(tokenizer, out_dir, model_max_length=max_length)
    write_model_card(out_dir / "README.md", checkpoint_card(config))


@contextlib.contextmanager
def _log_to_file(path: Path, enabled: bool) -> Iterator[None]:
    """Copy log records into the checkpoint's train_log.txt for the duration of the run."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def finetune(cfg: FinetuneConfig, ctx: DistContext) -> dict[str, Any]:
    """Train, evaluating and keeping the best checkpoint in cfg.out; returns the best record."""
    device = ctx.device
    reader = replace(cfg.reader, task=cfg.task)
    train_parts = [read_labelled(path, reader) for path in cfg.train]
    dev_data = read_labelled(cfg.dev, reader)
    labels = train_parts[0].labels  # one reader config, so every file has the same label names
    for part in train_parts:
        log.info(
            "train file %s: %d examples %s", part.path, len(part.examples), part.label_counts()
        )
    all_train = [example for part in train_parts for example in part.examples]
    train_examples = _subsample(all_train, cfg.max_train_examples, cfg.seed)
    log.info(
        "train %s: %d examples %s; dev %s: %d examples %s",
        " + ".join(map(str, cfg.train)), len(train_examples),
        label_counts(train_examples, labels),
        cfg.dev, len(dev_data.examples), dev_data.label_counts(),
    )  # fmt: skip

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # same seed on every rank: identical head init (DDP checks it)
    model, init_dir = build_classifier(cfg.init, len(labels), cfg.dropout)
    if cfg.freeze_embeddings:
        # The 30k x H word table is half of MiniLM's weights; its dense gradient and AdamW update
        # cost a quarter of a CPU step, and fine-tuning it adds little (positions stay trainable).
        model.encoder.embeddings.word.weight.requires_grad_(False)
    torch.manual_seed(cfg.seed + ctx.rank)  # from here on (dropout) each rank draws its own
    tokenizer = load_tokenizer(init_dir, max_length=cfg.max_length)
    pad_id = model.encoder.config.pad_token_id
    encoded_train = EncodedDataset(train_examples, tokenizer, cfg.max_length)
    train_set: EncodedDataset | WithSoftLabels = encoded_train
    if cfg.teachers:
        soft = _teacher_targets(cfg, train_examples, labels, ctx.device)
        train_set = WithSoftLabels(encoded_train, soft)
    dev_set = EncodedDataset(dev_data.examples, tokenizer, cfg.max_length)
    sampler = LengthBucketBatchSampler(
        train_set.lengths, cfg.batch_size, shuffle=True, seed=cfg.seed,
        num_replicas=ctx.world_size, rank=ctx.rank,
    )  # fmt: skip
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=Collator(pad_id))

    steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_ratio * total_steps)
    model.to(device)
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay)
    scheduler = linear_warmup_decay(optimizer, warmup_steps, total_steps)
    ddp_model = wrap_ddp(model, ctx)
    log.info(
        "%d optimizer steps (%d/epoch, %d warm-up), %d examples per step on %s x%d",
        total_steps, steps_per_epoch, warmup_steps,
        cfg.batch_size * cfg.grad_accum * ctx.world_size, device, ctx.world_size,
    )  # fmt: skip

    metrics = MetricsLogger(cfg.out / "metrics.jsonl", enabled=ctx.is_main)
    best = _Best()
    train_args = {k: jsonable(v) for k, v in asdict(cfg).items()}

    eval_seconds = 0.0  # kept out of the training throughput

    def evaluate_and_keep(step: int, epoch: float) -> None:
        nonlocal eval_seconds
        eval_started = time.monotonic()
        result = evaluate_dataset(
            unwrap(ddp_model), dev_set, labels, cfg.eval_batch_size, device, ctx, pad_id
        )
        metrics.log(
            split="dev", step=step, epoch=round(epoch, 3), loss=result["loss"],
            accuracy=result["accuracy"], macro_f1=result["macro_f1"],
        )  # fmt: skip
        improved = result["accuracy"] > best.dev_accuracy
        log.info(
            "step %d (epoch %.2f): dev accuracy %.4f macro-F1 %.4f loss %.4f%s",
            step, epoch, result["accuracy"], result["macro_f1"], result["loss"],
            " (best so far, saved)" if improved else "",
        )  # fmt: skip
        if improved:
            best.step, best.epoch = step, round(epoch, 3)
            best.dev_accuracy, best.dev_macro_f1 = result["accuracy"], result["macro_f1"]
            if ctx.is_main:
                save_classifier(
                    cfg.out, model, tokenizer, cfg.task, labels, cfg.max_length,
                    init=str(init_dir), train_args=train_args, best=asdict(best),
                )  # fmt: skip
        if ctx.is_main:  # a curve to look at while a long run goes on
            plot_training_curves(cfg.out / "metrics.jsonl", cfg.out / "training_curve.png")
        barrier(ctx)  # no rank runs ahead while the main one writes
        eval_seconds += time.monotonic() - eval_started

    step = 0
    examples_seen = 0
    started = time.monotonic()
    bar = progress_bar(total_steps, f"train {cfg.task}", enabled=ctx.is_main)
    ddp_model.train()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        for group in grouped(loader, cfg.grad_accum):
            loss, grad_norm = train_step(
                ddp_model, group, optimizer, scheduler, cfg.max_grad_norm, device,
                cfg.distill_weight, cfg.distill_temperature,
            )  # fmt: skip
            step += 1
            examples_seen += sum(int(b["labels"].numel()) for b in group) * ctx.world_size
            ex_per_s = examples_seen / max(time.monotonic() - started - eval_seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{ex_per_s:.1f}")
            if step % cfg.log_every == 0 or step == 1:
                metrics.log(
                    split="train", step=step, epoch=round(step / steps_per_epoch, 3), loss=loss,
                    lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, ex_per_s=ex_per_s,
                )  # fmt: skip
            if cfg.eval_every and step % cfg.eval_every == 0 and step % steps_per_epoch:
                evaluate_and_keep(step, step / steps_per_epoch)
        evaluate_and_keep(step, epoch + 1.0)
    bar.close()
    wall = time.monotonic() - started
    summary = {
        **asdict(best),
        "steps": step,
        "wall_seconds": round(wall, 1),
        "eval_seconds": round(eval_seconds, 1),
        "train_ex_per_s": round(examples_seen / max(wall - eval_seconds, 1e-9), 1),
        "device": str(device),
        "world_size": ctx.world_size,
    }
    if ctx.is_main:
        # The run's totals join the best checkpoint's config (metrics.jsonl stays per-step).
        config = load_checkpoint_config(cfg.out)
        config["training"] = summary
        (cfg.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_model_card(cfg.out / "README.md", checkpoint_card(config))
    log.info(
        "done in %.0f s: best dev accuracy %.4f at step %d; checkpoint %s",
        wall, best.dev_accuracy, best.step, cfg.out,
    )  # fmt: skip
    return summary


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FinetuneConfig()
    parser.add_argument(
        "--train", type=Path, nargs="+", required=True,
        help="labelled TSV/CSV/JSONL(.gz); several files are concatenated in order",
    )  # fmt: skip
    parser.add_argument("--dev", type=Path, required=True, help="labelled dev file")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--init", default=None, help="HF BERT checkpoint dir (default: the packaged MiniLM-L6)"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="per process and micro-batch"
    )
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches/step")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    parser.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="<=0: off")
    parser.add_argument("--max-length", type=int, default=d.max_length, help="tokens per input")
    parser.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="steps; 0: only at epoch ends"
    )
    parser.add_argument("--log-every", type=int, default=d.log_every, help="steps per train record")
    parser.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--max-train-examples", type=int, default=None, help="random subset")
    parser.add_argument(
        "--dropout", type=float, default=None, help="encoder+head dropout (default: checkpoint's)"
    )
    parser.add_argument(
        "--freeze-embeddings", action="store_true", help="keep the word embeddings fixed (faster)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all cores)"
    )
    parser.add_argument(
        "--teacher", dest="teachers", nargs="+", default=[], metavar="DIR",
        help="fine-tuned checkpoints to distil from (their probabilities are averaged)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-weight", type=float, default=d.distill_weight,
        help="weight of the teachers' term (the gold labels get 1 - it)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-temperature", type=float, default=d.distill_temperature,
        help="softmax temperature of the distillation term",
    )  # fmt: skip
    add_reader_arguments(parser, labels=True)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    reader = reader_config_from_args(args, args.task)
    for name, value, low in (
        ("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
        ("--grad-accum", args.grad_accum, 1), ("--max-length", args.max_length, 8),
        ("--log-every", args.log_every, 1), ("--eval-batch-size", args.eval_batch_size, 1),
    ):  # fmt: skip
        if value < low:
            raise DataError(f"{name} must be at least {low}, got {value}")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise DataError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if not 0.0 < args.distill_weight <= 1.0:
        raise DataError(f"--distill-weight must be in (0, 1], got {args.distill_weight}")
    if args.distill_temperature <= 0:
        raise DataError(f"--distill-temperature must be > 0, got {args.distill_temperature}")
    return FinetuneConfig(
        task=args.task,
        train=tuple(args.train),
        dev=args.dev,
        out=args.out,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        max_length=args.max_length,
        eval_every=args.eval_every,
        log_every=args.log_every,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        device=args.device,
        max_train_examples=args.max_train_examples,
        dropout=args.dropout,
        freeze_embeddings=args.freeze_embeddings,
        threads=args.threads,
        teachers=tuple(str(t) for t in args.teachers),
        distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        reader=reader,
    )


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        ctx = init_distributed(cfg.device)
    except (DataError, ValueError) as e:  # bad options, --device cuda without a GPU
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ctx.is_main:  # one copy of the progress messages is enough
        logging.getLogger("model_src").setLevel(logging.WARNING)
    try:
        with _log_to_file(cfg.out / "train_log.txt", enabled=ctx.is_main):
            summary = finetune(cfg, ctx)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed(ctx)
    if ctx.is_main:
        print(
            f"best dev accuracy {summary['dev_accuracy']:.4f} (macro-F1 "
            f"{summary['dev_macro_f1']:.4f}) at step {summary['step']}; checkpoint in {cfg.out}"
        )
    return 0
