"""Labelled text files for the classifiers: readers, bad-row accounting, the reader options.

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
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from model_src.classifier.tasks import TASKS
from model_src.common.options import option

log = logging.getLogger(__name__)

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


def parse_column(value: str) -> Column:
    """CLI helper: "2" -> 2 (0-based position), "sentence" -> "sentence" (header name)."""
    return int(value) if value.isdigit() else value


def _parse_labels(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _parse_label_map(value: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected RAW=NAME[,RAW=NAME...], got {value!r}")
    return {raw.strip(): name.strip() for raw, name in pairs}


_FILES = "data files"  # the options' group in --help


@dataclass(frozen=True)
class ReaderConfig:
    """How to read one labelled file; the fields are also the commands' data-file options."""

    task: str = option("classifier", cli=False)  # a TASKS key; the command sets it
    text_column: Column | None = option(
        None, "header name or 0-based index of the text (default: sentence/text/premise...)",
        parse=parse_column, group=_FILES,
    )  # fmt: skip
    pair_column: Column | None = option(
        None, "nli: the second text (default: hypothesis/sentence2)", parse=parse_column,
        group=_FILES,
    )  # fmt: skip
    label_column: Column | None = option(
        None, "header name or 0-based index of the label (default: label/gold_label)",
        parse=parse_column, group=_FILES,
    )  # fmt: skip
    labels: tuple[str, ...] | None = option(
        None, "comma-separated label names in output order (default: negative,positive for "
        "classifier; entailment,neutral,contradiction for nli); a raw label that is a digit i "
        "means the i-th name", parse=_parse_labels, group=_FILES,
    )  # fmt: skip
    label_map: dict[str, str] = option(
        default_factory=dict, help="extra raw label -> name pairs, e.g. pos=positive,neg=negative",
        parse=_parse_label_map, group=_FILES,
    )  # fmt: skip
    # TSV/CSV: the first line names the columns (true for ../shared/data)
    header: bool = option(
        True, "TSV/CSV files have no header line (columns are then positions)",
        flag="--no-header", group=_FILES,
    )  # fmt: skip
    max_bad_fraction: float = option(
        0.01, "stop when more than this fraction of a file's rows is bad", group=_FILES
    )
    max_examples: int | None = option(None, cli=False)  # the first N good rows (quick runs)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, not {self.task!r}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise DataError(f"label names must be distinct, got {list(self.labels)}")

    def label_names(self) -> tuple[str, ...]:
        return self.labels or TASKS[self.task].labels


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
