"""Turning sentences (or sentence pairs) into padded int64 batches, and reading dev files.

Used for export-time parity and accuracy checks and by the benchmark. Tokenisation is the
checkpoint's own tokenizer.json through the `tokenizers` library, as in training and serving.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

Text = str | tuple[str, str]  # one sentence, or a (premise, hypothesis) pair


@dataclass
class Batch:
    input_ids: np.ndarray  # int64 (B, T)
    attention_mask: np.ndarray  # int64 (B, T), 1 token / 0 padding
    token_type_ids: np.ndarray  # int64 (B, T), segment 0 / 1

    def feeds(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The ONNX feed dict, limited to the graph's declared input names when given."""
        all_feeds = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
        return all_feeds if names is None else {n: all_feeds[n] for n in names}


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """The checkpoint tokenizer, truncating to `max_length`, with padding left to `encode`."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # we pad per batch to its longest member
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[Text], pad_id: int = 0) -> Batch:
    encodings = tokenizer.encode_batch(list(texts))
    T = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), T), dtype=np.int64)
    types = np.zeros((len(encodings), T), dtype=np.int64)
    for i, e in enumerate(encodings):
        n = len(e.ids)
        ids[i, :n] = e.ids
        mask[i, :n] = 1
        types[i, :n] = e.type_ids
    return Batch(ids, mask, types)


def varied_batches(
    texts: Sequence[Text], sizes: Sequence[int] = (1, 3, 8, 16, 2, 5)
) -> Iterator[list[Text]]:
    """Split `texts` (in their given order, so lengths mix) into batches of cycling sizes."""
    i, k = 0, 0
    while i < len(texts):
        size = sizes[k % len(sizes)]
        yield list(texts[i : i + size])
        i += size
        k += 1


def length_sorted_batches(
    tokenizer: Tokenizer, texts: Sequence[Text], batch_size: int = 32
) -> Iterator[tuple[list[int], list[Text]]]:
    """(original indices, texts) batches sorted by token length: little padding, fast evaluation."""
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, [texts[i] for i in idx]


@dataclass
class LabelledTexts:
    texts: list[Text]
    labels: list[int]  # index into the model's label list


def read_dev_file(
    path: Path, labels: Sequence[str], pair: bool, limit: int | None
) -> LabelledTexts:
    """Read a TSV with a header: `label<TAB>sentence` or `premise<TAB>hypothesis<TAB>label`.

    Column order does not matter; labels may be names from `labels` or integer indices (SST-2
    writes 0/1). No quoting, as in ../shared/data/README.md.
    """
    texts: list[Text] = []
    gold: list[int] = []
    # Training files may be gzipped (SNLI's train.tsv.gz is the default calibration source).
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        fields = reader.fieldnames or []
        if "label" not in fields:
            raise ValueError(f"{path}: no 'label' column in header {fields}")
        if pair and not {"premise", "hypothesis"} <= set(fields):
            raise ValueError(f"{path}: a pair task needs 'premise' and 'hypothesis' columns")
        text_field = next((c for c in ("sentence", "text") if c in fields), None)
        if not pair and text_field is None:
            raise ValueError(f"{path}: needs a 'sentence' or 'text' column, header is {fields}")
        for row in reader:
            raw = row["label"].strip()
            if raw in labels:
                label = list(labels).index(raw)
            elif raw.isdigit() and int(raw) < len(labels):
                label = int(raw)
            else:
                raise ValueError(f"{path}: label {raw!r} is not one of {list(labels)}")
            if pair:
                texts.append((row["premise"], row["hypothesis"]))
            else:
                assert text_field is not None
                texts.append(row[text_field])
            gold.append(label)
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise ValueError(f"{path}: no rows")
    return LabelledTexts(texts, gold)
