"""Labelled examples as model inputs: tokenized once, padded per batch, batched by length."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset, Sampler

from model_src.bert.tokenization import encode_batch, pad_encodings
from model_src.classifier.data import Example


class EncodedDataset(Dataset[dict[str, Any]]):
    """Examples tokenized once up front (the Rust tokenizer does a whole file in seconds), so
    lengths are known to the bucketing sampler and collate only pads."""

    def __init__(self, examples: Sequence[Example], tokenizer: Tokenizer, max_length: int) -> None:
        self.examples = list(examples)
        pairs = [e.text_pair or "" for e in self.examples]
        has_pairs = any(e.text_pair is not None for e in self.examples)
        encodings = encode_batch(
            tokenizer, [e.text for e in self.examples], pairs if has_pairs else None, max_length
        )
        self.input_ids = encodings.input_ids
        self.token_type_ids = encodings.token_type_ids
        self.labels = [e.label for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[index],
            "token_type_ids": self.token_type_ids[index],
            "label": self.labels[index],
        }

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass(frozen=True)
class Collator:
    """Pad a list of dataset items to the longest in the batch; add the labels."""

    pad_id: int = 0  # [PAD] is id 0 in BERT vocabularies; pass the tokenizer's id if different

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_encodings(
            [item["input_ids"] for item in items],
            [item["token_type_ids"] for item in items],
            self.pad_id,
        )  # input_ids, attention_mask, token_type_ids: (B, T)
        batch["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.long)  # (B,)
        if (
            "soft_label" in items[0]
        ):  # distillation targets (model_src.classifier.distill.WithSoftLabels)
            batch["soft_labels"] = torch.stack([item["soft_label"] for item in items])  # (B, C)
        return batch


@dataclass(eq=False)  # compared by identity, like any sampler
class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length with DistributedSampler's semantics.

    Each epoch: shuffle all indices with (seed + epoch); pad by repeating from the start so every
    rank gets the same count; take this rank's share (rank::world_size); cut it into chunks of
    `batch_size * bucket_batches` indices, sort each chunk by length, split into batches and
    shuffle the batch order. Padding drops from "longest in a random batch" to "longest among
    neighbours in length" while the data stays randomly mixed across chunks. Every rank yields
    the same number of batches, which DDP needs to keep its all-reduces in step.
    """

    lengths: Sequence[int]  # tokens of each example, in dataset order
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    bucket_batches: int = 50  # chunk = 50 batches: little padding, still random mixing
    num_replicas: int = 1
    rank: int = 0
    drop_last: bool = False
    epoch: int = field(default=0, init=False)  # set_epoch() before each epoch

    def __post_init__(self) -> None:
        if self.batch_size < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"bad batch_size={self.batch_size} / rank={self.rank} of {self.num_replicas}"
            )
        self.lengths = list(self.lengths)
        self.per_rank = math.ceil(len(self.lengths) / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_indices(self) -> list[int]:
        indices = list(range(len(self.lengths)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(indices)
        total = self.per_rank * self.num_replicas
        while len(indices) < total:  # repeat from the start, like DistributedSampler
            indices += indices[: total - len(indices)]
        return indices[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self._rank_indices()
        chunk = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            if self.shuffle:  # sorting an ordered eval set would only reorder the output
                part.sort(key=lambda i: self.lengths[i])
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            random.Random(self.seed + self.epoch + 1_000_003).shuffle(batches)
        yield from batches

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)
