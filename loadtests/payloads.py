"""Request payloads for the load tests: real dataset text when ../shared/data exists, else bundled.

Texts come from the data the models are trained on (SST-2 dev sentences, SNLI and MultiNLI dev
pairs, Multi30k val captions) so token lengths look like production traffic. The classification
pool mixes single sentences with multi-sentence "reviews" (a realistic length tail, up to past
the 128-token truncation point), because a load test of only short sentences flatters batching.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from loadtests import sample_texts

logger = logging.getLogger(__name__)

# Environment variable that points the load tests at a data directory (../shared/data layout).
DATA_DIR_ENV = "NLPSERVE_LOADTEST_DATA"


@dataclass(frozen=True)
class LengthMix:
    """How classification texts are built from single sentences (weights need not sum to 1)."""

    single: float = 0.65  # one sentence: the common case (a tweet, a one-line review)
    short_review: float = 0.25  # 2-3 sentences
    long_review: float = 0.10  # 5-8 sentences: often past max_length, exercises truncation
    short_review_sentences: tuple[int, int] = (2, 3)
    long_review_sentences: tuple[int, int] = (5, 8)


@dataclass(frozen=True)
class Payloads:
    """Pools the Locust users draw from."""

    texts: list[str]  # classification texts (length-mixed)
    pairs: list[tuple[str, str]]  # (premise, hypothesis)
    sources: list[str]  # translation sources (English captions)
    origin: str  # "dataset:<dir>" or "bundled"


# A data-dir value meaning "the bundled sample texts", whatever exists on disk.
BUNDLED = "bundled"


def resolve_data_dir(value: str | None) -> Path | None:
    """'' or None: the default_data_dir(); 'bundled': None (bundled texts); else that path."""
    if not value:
        return default_data_dir()
    return None if value == BUNDLED else Path(value)


def default_data_dir() -> Path | None:
    """The data directory: $NLPSERVE_LOADTEST_DATA, else ../shared/data next to the repo, if any."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return resolve_data_dir(env)
    candidate = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _read_tsv(path: Path, columns: tuple[str, ...], limit: int) -> list[tuple[str, ...]]:
    # The data README: header line, one TAB between fields, no quoting at all.
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = []
        for row in reader:
            rows.append(tuple(row[c] for c in columns))
            if len(rows) >= limit:
                break
    return rows


def _read_lines(path: Path, limit: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line in itertools.islice(lines, limit) if line]


def mix_lengths(sentences: list[str], n: int, rng: random.Random, mix: LengthMix) -> list[str]:
    """Build n classification texts from sentences following the length mix."""
    kinds = ("single", "short", "long")
    weights = (mix.single, mix.short_review, mix.long_review)
    texts = []
    for kind in rng.choices(kinds, weights=weights, k=n):
        if kind == "single":
            count = 1
        elif kind == "short":
            count = rng.randint(*mix.short_review_sentences)
        else:
            count = rng.randint(*mix.long_review_sentences)
        texts.append(" ".join(rng.sample(sentences, min(count, len(sentences)))))
    return texts


def load_payloads(
    data_dir: Path | None = None,
    *,
    pool_size: int = 2000,
    seed: int = 0,
    mix: LengthMix = LengthMix(),
) -> Payloads:
    """Build the payload pools from data_dir (../shared/data layout), or the bundled texts."""
    rng = random.Random(seed)  # same payloads on every run, so runs compare
    sst2 = data_dir / "sst2" / "dev.tsv" if data_dir else None
    if data_dir is not None and sst2 is not None and sst2.is_file():
        sentences = [s for (s,) in _read_tsv(sst2, ("sentence",), 100_000)]
        pairs: list[tuple[str, str]] = []
        # SNLI captions are short; MultiNLI premises are longer: 70/30 gives a realistic tail.
        for name, share in (("snli/dev.tsv", 0.7), ("mnli/dev_matched.tsv", 0.3)):
            path = data_dir / name
            if path.is_file():
                rows = _read_tsv(path, ("premise", "hypothesis"), 100_000)
                chosen = rng.sample(rows, min(len(rows), int(pool_size * share)))
                pairs += [(premise, hypothesis) for premise, hypothesis in chosen]
        sources_path = data_dir / "multi30k" / "val.en"
        sources = _read_lines(sources_path, 100_000) if sources_path.is_file() else []
        origin = f"dataset:{data_dir}"
    else:
        if data_dir is not None:
            logger.warning("no sst2/dev.tsv under %s: using the bundled sample texts", data_dir)
        sentences = list(sample_texts.REVIEW_SENTENCES)
        pairs, sources, origin = [], [], "bundled"
    pairs = pairs or list(sample_texts.NLI_PAIRS)
    sources = sources or list(sample_texts.CAPTIONS)
    rng.shuffle(pairs)
    rng.shuffle(sources)
    return Payloads(
        texts=mix_lengths(sentences, pool_size, rng, mix),
        pairs=pairs,
        sources=sources,
        origin=origin,
    )
