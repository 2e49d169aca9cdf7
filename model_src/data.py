"""Labelled text data for the classifiers: file readers, a tokenizing Dataset, a length sampler.

Readers take TSV (no quoting, as in ../shared/data), CSV (standard quoting) and JSONL, each
optionally gzipped. Columns are found by name in the header (SST-2's `label`/`sentence`, SNLI's
`premise`/`hypothesis`/`label` and common aliases) or given explicitly by name or 0-based index.
A bad row (wrong column count, empty text, missing or unknown label) is logged as `file:line:
reason` and counted; too many bad rows stop the read with a `DataError`, which the CLI prints as
one line and exits 2.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset, Sampler

from model_src.tokenization import encode_batch, pad_encodings

log = logging.getLogger(__name__)

TASKS = ("classifier", "nli")
# Label names (in output order) when none are given. SST-2's `0`/`1` map by index.
DEFAULT_LABELS: dict[str, tuple[str, ...]] = {
    "classifier": ("negative", "positive"),
    "nli": ("entailment", "neutral", "contradiction"),
}
# Header names looked for (first match wins) when a column is not given.
TEXT_ALIASES = ("sentence", "text", "content", "review", "sentence1", "premise")
PAIR_ALIASES = ("hypothesis", "sentence2")
NLI_TEXT_ALIASES = ("premise", "sentence1", "text", "sentence")
LABEL_ALIASES = ("label", "gold_label", "labels", "class")
MISSING_LABELS = frozenset({"", "-", "none", "null"})  # SNLI marks "no consensus" with "-"
MAX_LOGGED_BAD_ROWS = 20  # beyond this only the count grows; a broken file must not flood logs


class DataError(Exception):
    """Input data the command cannot use; the message is one line, fit to show the user."""


Column = str | int  # header name, or 0-based position


@dataclass(frozen=True)
class ReaderConfig:
    """How to read one labelled file."""

    task: str = "classifier"  # "classifier" (one text) or "nli" (text pair)
    text_column: Column | None = None  # None: first header alias found (sentence/text/premise...)
    pair_column: Column | None = None  # nli only; None: hypothesis/sentence2
    label_column: Column | None = None  # None: label/gold_label
    labels: tuple[str, ...] | None = None  # label names in model output order; None: task default
    label_map: dict[str, str] = field(default_factory=dict)  # raw value -> name, e.g. {"pos": ..}
    header: bool = True  # TSV/CSV: the first line names the columns (true for ../shared/data)
    max_bad_fraction: float = 0.01  # more bad rows than this fraction stops the read
    max_examples: int | None = None  # keep only the first N good rows (quick experiments)

    def label_names(self) -> tuple[str, ...]:
        return self.labels or DEFAULT_LABELS[self.task]


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int  # index into the label names
    line: int  # 1-based line in the source file (for messages)


@dataclass(frozen=True)
class BadRow:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LabelledData:
    path: Path
    examples: list[Example]
    labels: tuple[str, ...]
    bad_rows: list[BadRow]
    rows_read: int  # good + bad, header and blank lines excluded

    def label_counts(self) -> dict[str, int]:
        return label_counts(self.examples, self.labels)


def label_counts(examples: Iterable[Example], labels: Sequence[str]) -> dict[str, int]:
    counts = Counter(e.label for e in examples)
    return {name: counts.get(i, 0) for i, name in enumerate(labels)}


# --- raw rows ---------------------------------------------------------------------------------


def _file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".tsv", ".txt"):
        return "tsv"
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataError(f"{path}: unknown file type {ext or '(none)'!r}; use .tsv, .csv or .jsonl[.gz]")


def _open_text(path: Path) -> TextIO:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    # newline="" lets the csv module see the real line ends (its docs require it).
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _delimited_rows(f: TextIO, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) per non-blank row. TSV: no quoting at all, so a `"` at the
    start of a field stays text (MultiNLI has such fields); CSV: the standard dialect."""
    if fmt == "tsv":
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(f)
    line = 1
    for fields in reader:
        if fields and any(x.strip() for x in fields):
            yield line, fields
        line = reader.line_num + 1  # a quoted CSV field may span lines


def _json_rows(f: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, object) per non-blank line; a line that is not a JSON object yields the reason."""
    for line, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield line, f"not valid JSON ({e.msg})"
            continue
        yield line, obj if isinstance(obj, dict) else "not a JSON object"


# --- column resolution -------------------------------------------------------------------------


def parse_column(value: str) -> Column:
    """CLI helper: "2" -> 2 (0-based position), "sentence" -> "sentence" (header name)."""
    return int(value) if value.isdigit() else value


def _header_position(
    given: Column | None, aliases: Sequence[str], header: list[str], what: str, path: Path
) -> int:
    if isinstance(given, int):
        return given
    if given is not None:
        if given not in header:
            raise DataError(f"{path}: no column {given!r} in header {header}")
        return header.index(given)
    for name in aliases:
        if name in header:
            return header.index(name)
    raise DataError(
        f"{path}: cannot find the {what} column in header {header}; pass --{what}-column"
    )


def _json_key(
    given: Column | None, aliases: Sequence[str], first: dict[str, Any], path: Path
) -> str:
    if isinstance(given, int):
        raise DataError(f"{path}: JSONL fields are named; give the column as a key, not {given}")
    if given is not None:
        return given
    return next((name for name in aliases if name in first), aliases[0])


# --- labels ---------------------------------------------------------------------------------


def label_lookup(labels: Sequence[str], label_map: dict[str, str]) -> dict[str, int]:
    """Raw label text -> index: the names themselves (case-insensitive), their 0-based positions
    as digits (SST-2's 0/1 -> negative/positive), and any explicit raw -> name pairs."""
    lookup: dict[str, int] = {}
    for i, name in enumerate(labels):
        lookup[str(i)] = i
        lookup[name.lower()] = i
    for raw, name in label_map.items():
        if name not in labels:
            raise DataError(f"--label-map maps {raw!r} to {name!r}, which is not in {list(labels)}")
        lookup[raw.lower()] = labels.index(name)
    return lookup


# --- command-line options ---------------------------------------------------------------------


def _parse_label_map(value: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected RAW=NAME[,RAW=NAME...], got {value!r}")
    return {raw.strip(): name.strip() for raw, name in pairs}


def add_reader_arguments(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    """Options shared by training and evaluation for reading labelled files."""
    group = parser.add_argument_group("data files")
    group.add_argument(
        "--text-column",
        type=parse_column,
        default=None,
        help="header name or 0-based index of the text (default: sentence/text/premise...)",
    )
    # Single-text training has no second text to point at: no such option there.
    if parser.get_default("task") != "classifier":
        group.add_argument(
            "--pair-column",
            type=parse_column,
            default=None,
            help="nli: the second text (default: hypothesis/sentence2)",
        )
    group.add_argument(
        "--label-column",
        type=parse_column,
        default=None,
        help="header name or 0-based index of the label (default: label/gold_label)",
    )
    if labels:
        group.add_argument(
            "--labels",
            default=None,
            help="comma-separated label names in output order "
            "(default: negative,positive for classifier; entailment,neutral,contradiction for "
            "nli); a raw label that is a digit i means the i-th name",
        )
    group.add_argument(
        "--label-map",
        type=_parse_label_map,
        default={},
        help="extra raw label -> name pairs, e.g. pos=positive,neg=negative",
    )
    group.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        help="TSV/CSV files have no header line (columns are then positions)",
    )
    group.add_argument(
        "--max-bad-fraction",
        type=float,
        default=ReaderConfig.max_bad_fraction,
        help="stop when more than this fraction of a file's rows is bad (default: %(default)s)",
    )


def reader_config_from_args(
    args: argparse.Namespace, task: str, labels: Sequence[str] | None = None
) -> ReaderConfig:
    """ReaderConfig from the options above; `labels` (e.g. a checkpoint's) beats --labels."""
    if labels is None and getattr(args, "labels", None):
        labels = [name.strip() for name in args.labels.split(",") if name.strip()]
    if labels is not None and len(set(labels)) != len(labels):
        raise DataError(f"label names must be distinct, got {list(labels)}")
    return ReaderConfig(
        task=task,
        text_column=args.text_column,
        pair_column=getattr(args, "pair_column", None),  # absent for single-text training
        label_column=args.label_column,
        labels=tuple(labels) if labels else None,
        label_map=dict(args.label_map),
        header=args.header,
        max_bad_fraction=args.max_bad_fraction,
    )


# --- reading ------------------------------------------------------------------------------------

# (line, (text, pair, raw label)) for a parsed row, (line, reason) for a row that cannot be.
Record = tuple[int, "tuple[Any, Any, Any] | str"]


def _aliases(config: ReaderConfig) -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    text = NLI_TEXT_ALIASES if config.task == "nli" else TEXT_ALIASES
    return text, PAIR_ALIASES, LABEL_ALIASES


def _delimited_records(f: TextIO, fmt: str, path: Path, config: ReaderConfig) -> Iterator[Record]:
    rows = _delimited_rows(f, fmt)
    want_pair = config.task == "nli"
    given = (config.text_column, config.pair_column, config.label_column)
    width: int | None = None
    if config.header:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path}: empty file (expected a header line)")
        header = [h.strip() for h in first[1]]
        width = len(header)
        text_aliases, pair_aliases, label_aliases = _aliases(config)
        text_pos = _header_position(config.text_column, text_aliases, header, "text", path)
        pair_pos = (
            _header_position(config.pair_column, pair_aliases, header, "pair", path)
            if want_pair
            else -1
        )
        label_pos = _header_position(config.label_column, label_aliases, header, "label", path)
    else:
        if any(isinstance(g, str) for g in given):
            raise DataError(f"{path}: without a header, columns are 0-based positions")
        # Headerless defaults follow the shared files: SNLI-like `premise, hypothesis, label`,
        # SST-2-like `label, sentence`.
        defaults = (0, 1, 2) if want_pair else (1, -1, 0)
        text_pos, pair_pos, label_pos = (
            g if isinstance(g, int) else d for g, d in zip(given, defaults, strict=True)
        )
    needed = max(text_pos, pair_pos, label_pos)
    for line, fields in rows:
        width = width or len(fields)  # headerless: the first row sets the width
        if len(fields) != width:
            yield line, f"{len(fields)} columns, expected {width}"
        elif needed >= len(fields):
            yield line, f"no column {needed} in a row of {len(fields)}"
        else:
            pair = fields[pair_pos] if want_pair else None
            yield line, (fields[text_pos], pair, fields[label_pos])


def _jsonl_records(f: TextIO, path: Path, config: ReaderConfig) -> Iterator[Record]:
    keys: tuple[str, str, str] | None = None
    for line, obj in _json_rows(f):
        if isinstance(obj, str):
            yield line, obj
            continue
        if keys is None:  # the first object decides which alias names the columns
            text_aliases, pair_aliases, label_aliases = _aliases(config)
            keys = (
                _json_key(config.text_column, text_aliases, obj, path),
                _json_key(config.pair_column, pair_aliases, obj, path),
                _json_key(config.label_column, label_aliases, obj, path),
            )
        pair = obj.get(keys[1]) if config.task == "nli" else None
        yield line, (obj.get(keys[0]), pair, obj.get(keys[2]))


def read_labelled(path: str | Path, config: ReaderConfig | None = None) -> LabelledData:
    """Read a labelled TSV/CSV/JSONL(.gz) file; raise DataError when it is unusable."""
    config = config or ReaderConfig()
    if config.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {config.task!r}")
    path = Path(path)
    fmt = _file_format(path)
    labels = config.label_names()
    lookup = label_lookup(labels, config.label_map)
    examples: list[Example] = []
    bad: list[BadRow] = []
    unknown = Counter[str]()
    rows_read = 0

    def check(text: str, pair: str, raw: str) -> str | None:
        """The reason a parsed row is bad, or None."""
        if not text:
            return "empty text"
        if config.task == "nli" and not pair:
            return "empty hypothesis"
        if raw.lower() in lookup:  # before the missing check: a label may be named "none"
            return None
        if raw.lower() in MISSING_LABELS:
            return "missing label"
        unknown[raw] += 1
        return f"unknown label {raw!r} (expected one of {list(labels)})"

    try:
        with _open_text(path) as f:
            records = (
                _jsonl_records(f, path, config)
                if fmt == "jsonl"
                else _delimited_records(f, fmt, path, config)
            )
            for line, record in records:
                if config.max_examples is not None and len(examples) >= config.max_examples:
                    break
                rows_read += 1
                if isinstance(record, str):
                    reason: str | None = record
                else:
                    text, pair, raw = ("" if v is None else str(v).strip() for v in record)
                    reason = check(text, pair, raw)
                if reason is None:
                    pair_or_none = pair if config.task == "nli" else None
                    examples.append(Example(text, pair_or_none, lookup[raw.lower()], line))
                    continue
                bad.append(BadRow(str(path), line, reason))
                if len(bad) <= MAX_LOGGED_BAD_ROWS:
                    log.warning("bad row %s", bad[-1])
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (OSError, EOFError, csv.Error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e

    data = LabelledData(path, examples, labels, bad, rows_read)
    _check_quality(data, config, unknown)
    return data


def _check_quality(data: LabelledData, config: ReaderConfig, unknown: Counter[str]) -> None:
    n_bad = len(data.bad_rows)
    if n_bad:
        log.warning("%s: %d of %d rows skipped as bad", data.path, n_bad, data.rows_read)
    fraction = n_bad / max(1, data.rows_read)
    if data.examples and fraction <= config.max_bad_fraction:
        return
    first = f"; first: {data.bad_rows[0]}" if data.bad_rows else ""
    hint = ""
    if unknown:
        common = ", ".join(repr(k) for k, _ in unknown.most_common(5))
        hint = f"; unknown labels seen: {common} (set --labels or --label-map)"
    if not data.rows_read:
        raise DataError(f"{data.path}: no data rows")
    if not data.examples:
        raise DataError(f"{data.path}: all {n_bad} rows are bad{first}{hint}")
    raise DataError(
        f"{data.path}: {n_bad} of {data.rows_read} rows are bad ({fraction:.1%} > "
        f"{config.max_bad_fraction:.1%} allowed by --max-bad-fraction){first}{hint}"
    )


# --- tokenized dataset -----------------------------------------------------------------------


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
        if "soft_label" in items[0]:  # distillation targets (model_src.distill.WithSoftLabels)
            batch["soft_labels"] = torch.stack([item["soft_label"] for item in items])  # (B, C)
        return batch


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length with DistributedSampler's semantics.

    Each epoch: shuffle all indices with (seed + epoch); pad by repeating from the start so every
    rank gets the same count; take this rank's share (rank::world_size); cut it into chunks of
    `batch_size * bucket_batches` indices, sort each chunk by length, split into batches and
    shuffle the batch order. Padding drops from "longest in a random batch" to "longest among
    neighbours in length" while the data stays randomly mixed across chunks. Every rank yields
    the same number of batches, which DDP needs to keep its all-reduces in step.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_batches: int = 50,  # chunk = 50 batches: little padding, still random mixing
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad batch_size={batch_size} / rank={rank} of {num_replicas}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.per_rank = math.ceil(len(self.lengths) / num_replicas)

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


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """This rank's share of an evaluation set, without the padding a training sampler adds (so
    summed counts over ranks are exact)."""
    return list(range(rank, count, world_size))


def iter_batches(indices: Iterable[int], batch_size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    for index in indices:
        batch.append(index)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
