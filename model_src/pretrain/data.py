"""Pretraining data: BERT's masking, next-sentence pairs from a document corpus, batches.

The corpus has one sentence per line and a blank line between documents. Each epoch pairs every
sentence with its true successor or (50%) a random sentence of another document; masks are drawn
afresh for every batch (dynamic masking) from the collator's own generator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from model_src.bert.heads import IGNORE_INDEX
from model_src.bert.tokenization import (
    CLS,
    MASK,
    PAD,
    SEP,
    encode_batch,
    pad_encodings,
    special_token_id,
)
from model_src.common.training import DistContext

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
