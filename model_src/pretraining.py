"""Masked-LM + next-sentence-prediction pretraining (BERT's objective) on raw text.

`python -m model_src pretrain --corpus FILE --out DIR [--init DIR] [--tokenizer PATH] ...`

The corpus has one sentence per line and a blank line between documents. Each epoch pairs every
sentence with its true successor or (50%) a random sentence of another document; masks are drawn
afresh for every batch (dynamic masking). With --init the run continues pretraining an HF BERT
checkpoint (domain adaptation); without it a new encoder of the --hidden-size/--num-layers/...
shape is trained from scratch on the --tokenizer vocabulary (e.g. one from `tokenizer train`).

The output directory is an HF BERT checkpoint (config.json, model.safetensors with the pooler
and MLM/NSP heads, tokenizer.json, vocab.txt), so it is a valid --init for fine-tuning and for
further pretraining, plus metrics.jsonl, training_curve.png and pretrain_args.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from model_src.bert import BertConfig
from model_src.checkpoint import jsonable
from model_src.heads import IGNORE_INDEX, BertForPretraining, PretrainingOutput
from model_src.hf_checkpoint import (
    load_pretrained_bert,
    load_pretraining_heads,
    resolve_checkpoint_dir,
    save_hf_bert,
)
from model_src.model_card import write_pretraining_card
from model_src.tokenization import (
    CLS,
    MASK,
    PAD,
    SEP,
    UNK,
    encode_batch,
    load_tokenizer,
    pad_encodings,
    special_token_id,
)
from model_src.training import (
    DistContext,
    MetricsLogger,
    autocast,
    build_adamw,
    cleanup_distributed,
    clip_grad,
    init_distributed,
    linear_warmup_decay,
    plot_training_curves,
    progress_bar,
    seed_everything,
    wrap_ddp,
)

logger = logging.getLogger(__name__)

IS_NEXT, NOT_NEXT = 0, 1  # NSP labels, as in BERT/HF: 0 = B follows A, 1 = B is random


# --- Masked LM ----------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mlm_probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: select each non-special token with mlm_probability; of the selected,
    80% become [MASK], 10% a random token, 10% stay unchanged.

    input_ids (B, T); special_tokens_mask (B, T) bool, True for [CLS]/[SEP]/[PAD]/... (never
    selected). Returns (masked inputs, labels): labels hold the original id at selected
    positions and IGNORE_INDEX (-100) everywhere else, so the loss sees only selected positions.
    """
    probability = torch.full(input_ids.shape, mlm_probability)
    probability.masked_fill_(special_tokens_mask, 0.0)
    selected = torch.bernoulli(probability, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # 80% of the selected -> [MASK]; half of the remaining 20% -> random token; the rest as is.
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool()
    to_mask &= selected
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
    to_random &= selected & ~to_mask
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)

    inputs = input_ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def special_tokens_mask(input_ids: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) bool: True where the id is one of special_ids ([CLS], [SEP], [PAD], [MASK])."""
    return torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))


# --- Next-sentence prediction -------------------------------------------------------------------


@dataclass(frozen=True)
class SentencePair:
    first: str
    second: str
    label: int  # IS_NEXT (0) or NOT_NEXT (1)


def read_documents(path: Path) -> list[list[str]]:
    """One sentence per line, blank lines between documents -> documents as sentence lists."""
    documents: list[list[str]] = [[]]
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            sentence = line.strip()
            if sentence:
                documents[-1].append(sentence)
            elif documents[-1]:
                documents.append([])
    return [d for d in documents if d]


def build_nsp_pairs(documents: Sequence[Sequence[str]], rng: random.Random) -> list[SentencePair]:
    """For every sentence with a successor: 50% (sentence, successor) labelled IS_NEXT, 50%
    (sentence, a random sentence of another document) labelled NOT_NEXT.

    Taking the negative from another document keeps it a true negative (a random sentence of
    the same document could be the actual successor or near it).
    """
    if len(documents) < 2:
        raise ValueError("next-sentence prediction needs at least two documents (blank-separated)")
    pairs = []
    for d, document in enumerate(documents):
        for i in range(len(document) - 1):
            if rng.random() < 0.5:
                pairs.append(SentencePair(document[i], document[i + 1], IS_NEXT))
            else:
                other = rng.randrange(len(documents) - 1)
                other += other >= d  # uniform over the other documents
                pairs.append(SentencePair(document[i], rng.choice(documents[other]), NOT_NEXT))
    return pairs


# --- Batches ------------------------------------------------------------------------------------


class PretrainingCollator:
    """Sentence pairs -> a padded, masked batch: input_ids, attention_mask, token_type_ids,
    mlm_labels, nsp_labels (int64 tensors). Masking uses the collator's own generator."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        generator: torch.Generator,
        mlm_probability: float = 0.15,
        vocab_size: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.generator = generator
        self.mlm_probability = mlm_probability
        self.vocab_size = vocab_size or tokenizer.get_vocab_size()
        self.pad_id = special_token_id(tokenizer, PAD)
        self.mask_id = special_token_id(tokenizer, MASK)
        self.special_ids = [special_token_id(tokenizer, t) for t in (PAD, CLS, SEP, MASK)]

    def __call__(self, pairs: Sequence[SentencePair]) -> dict[str, torch.Tensor]:
        enc = encode_batch(
            self.tokenizer,
            [p.first for p in pairs],
            [p.second for p in pairs],
            max_length=self.max_length,
        )
        batch = pad_encodings(enc.input_ids, enc.token_type_ids, self.pad_id)
        special = special_tokens_mask(batch["input_ids"], self.special_ids)
        special |= batch["attention_mask"] == 0
        batch["input_ids"], batch["mlm_labels"] = mask_tokens(
            batch["input_ids"],
            special,
            self.mask_id,
            self.vocab_size,
            self.generator,
            self.mlm_probability,
        )
        batch["nsp_labels"] = torch.tensor([p.label for p in pairs], dtype=torch.long)
        return batch


def pair_batches(
    documents: Sequence[Sequence[str]], batch_size: int, seed: int, ctx: DistContext
) -> Iterator[list[SentencePair]]:
    """Endless batches: each epoch re-draws the NSP negatives and reshuffles; ranks take
    disjoint strided shares of the same epoch."""
    epoch = 0
    while True:
        rng = random.Random(seed * 1_000_003 + epoch)  # same on every rank
        pairs = build_nsp_pairs(documents, rng)
        rng.shuffle(pairs)
        share = pairs[ctx.rank :: ctx.world_size]
        for start in range(0, len(share) - batch_size + 1, batch_size):
            yield share[start : start + batch_size]
        if len(share) < batch_size:  # a tiny corpus: one short batch per epoch
            yield share
        epoch += 1


# --- Model --------------------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    """A pretraining run; defaults suit continued pretraining of MiniLM-L6 on one GPU."""

    corpus: Path
    out: Path
    init: str | None = None  # HF BERT dir ("default": packaged MiniLM); None: from scratch
    tokenizer: Path | None = None  # default: the --init checkpoint's tokenizer
    steps: int = 10_000  # optimizer steps
    batch_size: int = 32  # sentence pairs per step and process
    lr: float = 1e-4  # BERT's pretraining peak lr
    weight_decay: float = 0.01  # BERT's value, matrices only
    warmup_ratio: float = 0.06  # fraction of steps warming up
    max_grad_norm: float = 1.0
    max_length: int = 128  # tokens per pair incl. [CLS]/[SEP]
    mlm_probability: float = 0.15  # BERT's masking rate
    dev_fraction: float = 0.05  # documents held out for a dev loss (needs >= 20 documents)
    eval_every: int = 500  # steps between dev evaluations (and at the end)
    log_every: int = 50  # steps between train-metric records
    seed: int = 42
    device: str = "auto"
    # From-scratch encoder shape (ignored with --init); a small BERT by default.
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.1


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
        with autocast(device):
            out = model(**batch)
        totals.add(out, batch)
    model.train(was_training)
    return totals.record()


def split_documents(
    documents: list[list[str]], dev_fraction: float, seed: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Hold out whole documents for a dev loss; none when the corpus is too small for it."""
    if dev_fraction <= 0 or len(documents) < 20:
        return documents, []
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_dev = max(2, round(dev_fraction * len(documents)))
    dev = [documents[i] for i in order[:n_dev]]
    train = [documents[i] for i in order[n_dev:]]
    return train, dev


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run pretraining; returns the last train and dev records.

    Under torchrun each rank trains on its share of every epoch (DDP); rank 0 logs its own
    train metrics, evaluates dev and writes the checkpoint.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx)
    finally:
        cleanup_distributed(ctx)


def _train(cfg: PretrainConfig, ctx: DistContext) -> dict[str, Any]:
    seed_everything(cfg.seed + ctx.rank)
    device = ctx.device
    if cfg.tokenizer is not None:
        tokenizer_source = cfg.tokenizer
    elif cfg.init is not None:
        tokenizer_source = resolve_checkpoint_dir(cfg.init)
    else:
        raise ValueError("training from scratch needs --tokenizer (e.g. from `tokenizer train`)")
    tokenizer = load_tokenizer(tokenizer_source)
    for token in (PAD, UNK, CLS, SEP, MASK):
        special_token_id(tokenizer, token)  # fail before training, not mid-way

    documents = read_documents(cfg.corpus)
    train_docs, dev_docs = split_documents(documents, cfg.dev_fraction, cfg.seed)
    if len(train_docs) < 2:
        raise ValueError(
            f"{cfg.corpus}: found {len(documents)} document(s); NSP needs at least two, "
            "separated by a blank line"
        )
    logger.info(
        "%d train / %d dev documents, %d sentences",
        len(train_docs),
        len(dev_docs),
        sum(map(len, documents)),
    )

    model = build_model(cfg, tokenizer).to(device).train()
    config = model.config
    collate = PretrainingCollator(
        tokenizer,
        cfg.max_length,
        torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank),
        cfg.mlm_probability,
        vocab_size=tokenizer.get_vocab_size(),
    )
    dev_batches: list[dict[str, torch.Tensor]] = []
    if dev_docs:  # fixed pairs and masks, so dev numbers are comparable across steps
        dev_collate = PretrainingCollator(
            tokenizer, cfg.max_length, torch.Generator().manual_seed(cfg.seed), cfg.mlm_probability
        )
        dev_pairs = build_nsp_pairs(dev_docs, random.Random(cfg.seed))
        dev_batches = [
            dev_collate(dev_pairs[i : i + cfg.batch_size])
            for i in range(0, len(dev_pairs), cfg.batch_size)
        ]

    ddp_model = wrap_ddp(model, ctx)
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay)
    scheduler = linear_warmup_decay(optimizer, round(cfg.warmup_ratio * cfg.steps), cfg.steps)
    metrics = MetricsLogger(cfg.out / "metrics.jsonl", enabled=ctx.is_main)
    batches = pair_batches(train_docs, cfg.batch_size, cfg.seed, ctx)
    bar = progress_bar(cfg.steps, "pretrain", enabled=ctx.is_main)
    totals, window_start, examples = _Totals(), time.monotonic(), 0
    last: dict[str, Any] = {}
    for step in range(1, cfg.steps + 1):
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(next(batches)).items()}
        with autocast(device):
            out = ddp_model(**batch)
        assert out.loss is not None
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = clip_grad(model, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        totals.add(out, batch)
        examples += batch["input_ids"].size(0)
        bar.update(1)

        if step % cfg.log_every == 0 or step == cfg.steps:
            ex_per_s = examples * ctx.world_size / max(time.monotonic() - window_start, 1e-9)
            record = totals.record()
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"loss became {record['loss']} at step {step}")
            last["train"] = record
            metrics.log(
                step=step,
                split="train",
                lr=scheduler.get_last_lr()[0],
                grad_norm=grad_norm,
                examples_per_s=round(ex_per_s, 1),
                **record,
            )
            bar.set_postfix(loss=f"{record['loss']:.3f}", ex_per_s=f"{ex_per_s:.0f}")
            totals, window_start, examples = _Totals(), time.monotonic(), 0
        if dev_batches and ctx.is_main and (step % cfg.eval_every == 0 or step == cfg.steps):
            last["dev"] = evaluate(model, dev_batches, device)
            metrics.log(step=step, split="dev", **last["dev"])
            logger.info("step %d dev %s", step, _fmt(last["dev"]))
    bar.close()

    if ctx.is_main:
        save_hf_bert(model.to("cpu").eval(), config, cfg.out, tokenizer)
        args_record = {k: jsonable(v) for k, v in vars(cfg).items()}
        (cfg.out / "pretrain_args.json").write_text(json.dumps(args_record, indent=2) + "\n")
        write_pretraining_card(cfg.out, args_record, last.get("dev"))
        plot_training_curves(cfg.out / "metrics.jsonl", cfg.out / "training_curve.png")
        logger.info("wrote %s", cfg.out)
    return last


def _fmt(record: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in record.items())


# --- CLI ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PretrainConfig(corpus=Path(), out=Path())
    parser.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="one sentence a line, blank lines between documents",
    )
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    parser.add_argument(
        "--init",
        default=None,
        help='HF BERT directory to continue from ("default": the packaged MiniLM-L6); '
        "omit to train from scratch",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer.json, vocab.txt or a directory holding one (default: --init's)",
    )
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    parser.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--mlm-probability", type=float, default=d.mlm_probability)
    parser.add_argument("--dev-fraction", type=float, default=d.dev_fraction)
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    scratch = parser.add_argument_group("from-scratch encoder shape (without --init)")
    scratch.add_argument("--hidden-size", type=int, default=d.hidden_size)
    scratch.add_argument("--num-layers", type=int, default=d.num_layers)
    scratch.add_argument("--num-heads", type=int, default=d.num_heads)
    scratch.add_argument("--intermediate-size", type=int, default=d.intermediate_size)
    scratch.add_argument("--dropout", type=float, default=d.dropout)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        corpus=args.corpus,
        out=args.out,
        init=args.init,
        tokenizer=args.tokenizer,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        max_length=args.max_length,
        mlm_probability=args.mlm_probability,
        dev_fraction=args.dev_fraction,
        eval_every=args.eval_every,
        log_every=args.log_every,
        seed=args.seed,
        device=args.device,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        dropout=args.dropout,
    )


def run(args: argparse.Namespace) -> int:
    """`python -m model_src pretrain`; bad input is a one-line error and exit code 2."""
    cfg = config_from_args(args)
    if not cfg.corpus.is_file():
        print(f"error: corpus file not found: {cfg.corpus}")
        return 2
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.max_length < 8:
        print("error: --steps and --batch-size must be >= 1 and --max-length >= 8")
        return 2
    if not 0.0 < cfg.mlm_probability < 1.0:
        print("error: --mlm-probability must be between 0 and 1")
        return 2
    try:
        last = train(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}")
        return 2
    summary = {split: _fmt(record) for split, record in last.items()}
    print(f"wrote {cfg.out} " + " | ".join(f"{k}: {v}" for k, v in summary.items()))
    return 0
