"""Parallel text: line-aligned readers (plain or gzip) and length-bucketed token-budget batches.

A batch's cost is its padded size, so batches are formed from examples of similar length and
capped by a budget of padded tokens (`batch_size * max(longest source, longest target)`) rather
than a fixed number of sentences: short sentences travel in big batches, long ones in small, and
almost nothing is spent on padding.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model_src.translator.tokenizer import PAD_ID, SOS_ID


def read_lines(path: Path) -> list[str]:
    """One text per line (".gz" files are decompressed); trailing newlines stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def read_parallel(
    src_path: Path, tgt_path: Path, max_examples: int | None = None
) -> tuple[list[str], list[str]]:
    """Line-aligned source and target texts; pairs where either side is empty are dropped."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: not line-aligned"
        )
    pairs = [(s, t) for s, t in zip(src, tgt, strict=True) if s.strip() and t.strip()]
    if max_examples is not None:
        pairs = pairs[:max_examples]
    if not pairs:
        raise ValueError(f"{src_path} / {tgt_path}: no non-empty sentence pairs")
    return [s for s, _ in pairs], [t for _, t in pairs]


def bucket_batches(
    src_lengths: Sequence[int],
    tgt_lengths: Sequence[int],
    max_tokens: int,
    shuffle: bool = True,
    seed: int = 0,
) -> list[list[int]]:
    """Group example indices into batches whose padded size stays within max_tokens.

    Examples are sorted by length (ties in random order when shuffling), cut greedily into
    batches, and the batch order is shuffled. The padded size of a batch is
    `len(batch) * max(longest source, longest target)`; an example longer than the budget on its
    own forms a batch of one (dropping data silently would be worse).
    """
    order = list(range(len(src_lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)  # the stable sort below then breaks length ties randomly
    order.sort(key=lambda i: (max(src_lengths[i], tgt_lengths[i]), src_lengths[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(src_lengths[i], tgt_lengths[i])
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard_batches(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the batches; every rank gets the same count so that no rank waits
    forever in an all-reduce the others never reach (the remainder is dropped)."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


@dataclass
class Batch:
    """Padded tensors of one batch; `tgt_in` is `<sos>` + target, `tgt_out` is target + `<eos>`."""

    src: torch.Tensor  # (B, S) int64, PAD_ID after each source's <eos>
    tgt_in: torch.Tensor  # (B, T) int64
    tgt_out: torch.Tensor  # (B, T) int64, PAD_ID where there is nothing to predict

    def to(self, device: torch.device) -> Batch:
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device))

    @property
    def num_target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())


def pad(sequences: Sequence[Sequence[int]], value: int = PAD_ID) -> torch.Tensor:
    """(B, longest) int64 tensor, right-padded with value."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
    """Batch of sources (ids ending in <eos>) and targets (ids ending in <eos>) for teacher
    forcing: the decoder reads <sos> y1..yn and predicts y1..yn <eos>."""
    tgt_in = pad([[SOS_ID, *t[:-1]] for t in tgt])
    return Batch(src=pad(src), tgt_in=tgt_in, tgt_out=pad(tgt))
