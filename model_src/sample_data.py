"""Small sample data the project writes itself, so the demo and the tests need no downloads.

`python -m model_src sample-data --out DIR` writes, deterministically for a given seed:

    DIR/sentiment/train.tsv, dev.tsv     header `label<TAB>sentence`, labels 0/1 (SST-2's format)
    DIR/nli/train.tsv, dev.tsv           header `premise<TAB>hypothesis<TAB>label` (SNLI's format)
    DIR/translation/train.en, train.de, dev.en, dev.de    one sentence per line, line-aligned
    DIR/corpus/pretrain.txt              one sentence per line, blank line between documents

The sentences come from templates over small vocabularies: varied enough that a model has to
learn the words rather than memorise whole sentences, regular enough that a small model trained
for a minute gets them right. Train and dev never share a sentence (or, for NLI, a pair).
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

Key = TypeVar("Key", bound=Hashable)
Row = TypeVar("Row")


@dataclass(frozen=True)
class SampleSizes:
    """Rows per split; documented in the module docstring and checked by the tests."""

    sentiment_train: int = 400  # a few hundred: enough for a tiny model to beat chance clearly
    sentiment_dev: int = 100
    nli_train: int = 480  # divisible by 3 so the three labels are exactly balanced
    nli_dev: int = 120
    translation_train: int = 500
    translation_dev: int = 100
    corpus_documents: int = 60  # pretraining corpus: documents of 4-8 sentences


SIZES = SampleSizes()


def _distinct(count: int, draw: Callable[[int], tuple[Key, Row]], seen: set[Key]) -> list[Row]:
    """`count` rows from `draw(rows so far)` -> (key, row), skipping a key already in `seen`
    (shared by a task's train and dev splits, so they never share a sentence)."""
    rows: list[Row] = []
    while len(rows) < count:
        key, row = draw(len(rows))
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


# --- sentiment --------------------------------------------------------------------------------

_SUBJECTS = [
    "the movie", "the film", "this picture", "the story", "the acting", "the script",
    "the soundtrack", "the ending", "the plot", "the cast", "the direction", "the dialogue",
    "the cinematography", "this comedy", "this drama", "the sequel", "the performance",
    "the documentary", "the thriller", "the animation",
]  # fmt: skip
_POSITIVE_ADJ = [
    "wonderful", "brilliant", "delightful", "moving", "beautiful", "charming", "funny",
    "gripping", "superb", "touching", "clever", "fresh", "excellent", "stunning", "warm",
    "memorable", "inspired", "powerful", "great", "lovely",
]  # fmt: skip
_NEGATIVE_ADJ = [
    "terrible", "boring", "awful", "dull", "painful", "clumsy", "lifeless", "tedious",
    "forgettable", "bland", "messy", "stupid", "horrible", "flat", "weak", "pointless",
    "annoying", "predictable", "bad", "lazy",
]  # fmt: skip
_POSITIVE_VERBS = ["loved", "enjoyed", "adored", "admired", "liked"]
_NEGATIVE_VERBS = ["hated", "disliked", "regretted", "resented", "could not stand"]
_INTENSIFIERS = ["really", "truly", "very", "remarkably", "utterly", "quite", "so"]
_POSITIVE_NOUNS = ["a joy", "a treat", "a triumph", "a delight", "a gem", "a pleasure"]
_NEGATIVE_NOUNS = ["a mess", "a disaster", "a bore", "a chore", "a failure", "a waste of time"]

# Lower-cased, space before the final period: the look of GLUE's SST-2.
_SENTIMENT_TEMPLATES: list[Callable[[random.Random, bool], str]] = [
    lambda r, pos: f"{r.choice(_SUBJECTS)} was {_adj(r, pos)} .",
    lambda r, pos: f"{r.choice(_SUBJECTS)} is {r.choice(_INTENSIFIERS)} {_adj(r, pos)} .",
    lambda r, pos: f"i {_verb(r, pos)} {r.choice(_SUBJECTS)} .",
    lambda r, pos: f"{r.choice(_SUBJECTS)} was {_adj(r, pos)} and {_adj(r, pos)} .",
    lambda r, pos: f"what {_noun(r, pos)} : {r.choice(_SUBJECTS)} is {_adj(r, pos)} .",
    lambda r, pos: f"{r.choice(_SUBJECTS)} is {_noun(r, pos)} from start to finish .",
    lambda r, pos: f"a {r.choice(_INTENSIFIERS)} {_adj(r, pos)} film .",
    lambda r, pos: f"we {_verb(r, pos)} it , {r.choice(_SUBJECTS)} felt {_adj(r, pos)} .",
]


def _adj(r: random.Random, positive: bool) -> str:
    return r.choice(_POSITIVE_ADJ if positive else _NEGATIVE_ADJ)


def _verb(r: random.Random, positive: bool) -> str:
    return r.choice(_POSITIVE_VERBS if positive else _NEGATIVE_VERBS)


def _noun(r: random.Random, positive: bool) -> str:
    return r.choice(_POSITIVE_NOUNS if positive else _NEGATIVE_NOUNS)


def sentiment_examples(count: int, rng: random.Random, seen: set[str]) -> list[tuple[int, str]]:
    """`count` distinct (label, sentence) rows, labels alternating 0/1 then shuffled."""

    def draw(n: int) -> tuple[str, tuple[int, str]]:
        label = n % 2  # balanced: 0 negative, 1 positive (SST-2's codes)
        sentence = rng.choice(_SENTIMENT_TEMPLATES)(rng, label == 1)
        return sentence, (label, sentence)

    rows = _distinct(count, draw, seen)
    rng.shuffle(rows)
    return rows


# --- NLI ----------------------------------------------------------------------------------------

# (noun phrase, broader term that it entails)
_PEOPLE = [
    ("A man", "A person"), ("A woman", "A person"), ("A boy", "A child"), ("A girl", "A child"),
    ("An old man", "A man"), ("A young woman", "A woman"), ("A teenager", "A young person"),
    ("A police officer", "A person"), ("A chef", "A cook"), ("A musician", "An artist"),
]  # fmt: skip
# (activity, a clearly incompatible activity, a plausible-but-unstated detail)
_ACTIVITIES = [
    ("playing guitar", "sleeping in bed", "playing a love song"),
    ("riding a bike", "swimming in a pool", "riding to work"),
    ("reading a book", "running a marathon", "reading a mystery novel"),
    ("cooking dinner", "driving a truck", "cooking for a party"),
    ("walking a dog", "flying a plane", "walking a puppy they just adopted"),
    ("painting a wall", "sitting in a movie theater", "painting a house they bought"),
    ("eating a sandwich", "sleeping on the couch", "eating lunch with a friend"),
    ("climbing a rock", "taking a bath", "climbing for the first time"),
    ("singing on stage", "sleeping at home", "singing at a competition"),
    ("throwing a ball", "reading in a library", "throwing a ball to a friend"),
]  # fmt: skip
_PLACES = [
    "in the park", "on the street", "at the beach", "in a kitchen", "near a lake",
    "in front of a building", "in the city", "on a sunny day", "outside", "in a small town",
]  # fmt: skip
_MOODS = ["happy", "tired", "famous", "angry", "a professional", "waiting for someone"]


def _nli_pair(r: random.Random, label: str) -> tuple[str, str]:
    person, broader = r.choice(_PEOPLE)
    activity, opposite, detail = r.choice(_ACTIVITIES)
    place = r.choice(_PLACES)
    premise = f"{person} is {activity} {place}."
    the = "The " + person.split(" ", 1)[1]  # "A young woman" -> "The young woman"
    if label == "entailment":
        hypothesis = r.choice(
            [
                f"{broader} is {activity}.",
                f"Someone is {activity} {place}.",
                f"{person} is {activity}.",
                f"There is {person.lower()} {place}.",
            ]
        )
    elif label == "contradiction":
        hypothesis = r.choice(
            [
                f"{person} is {opposite}.",
                f"Nobody is {activity}.",
                f"{the} is {opposite} {place}.",
                f"{broader} is {opposite}.",
            ]
        )
    else:  # neutral: consistent with the premise but not stated by it
        hypothesis = r.choice(
            [
                f"{person} is {detail}.",
                f"{the} is {r.choice(_MOODS)}.",
                f"{person} is {activity} with friends.",
                f"{broader} is {activity} to win a prize.",
            ]
        )
    return premise, hypothesis


NLI_LABELS = ("entailment", "neutral", "contradiction")


def nli_examples(
    count: int, rng: random.Random, seen: set[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    def draw(n: int) -> tuple[tuple[str, str], tuple[str, str, str]]:
        label = NLI_LABELS[n % 3]
        pair = _nli_pair(rng, label)
        return pair, (*pair, label)

    rows = _distinct(count, draw, seen)
    rng.shuffle(rows)
    return rows


# --- English -> German ------------------------------------------------------------------------

# (English, German, plural?)
_SUBJECTS_EN_DE = [
    ("A man", "Ein Mann", False), ("A woman", "Eine Frau", False), ("A child", "Ein Kind", False),
    ("A boy", "Ein Junge", False), ("A girl", "Ein Mädchen", False), ("A dog", "Ein Hund", False),
    ("An old man", "Ein alter Mann", False), ("A young woman", "Eine junge Frau", False),
    ("Two men", "Zwei Männer", True), ("Two women", "Zwei Frauen", True),
    ("Three children", "Drei Kinder", True), ("Two dogs", "Zwei Hunde", True),
]  # fmt: skip
# (English -ing phrase, German singular, German plural)
_VERB_PHRASES = [
    ("playing guitar", "spielt Gitarre", "spielen Gitarre"),
    ("playing soccer", "spielt Fußball", "spielen Fußball"),
    ("reading a book", "liest ein Buch", "lesen ein Buch"),
    ("riding a bike", "fährt Fahrrad", "fahren Fahrrad"),
    ("eating an apple", "isst einen Apfel", "essen einen Apfel"),
    ("drinking coffee", "trinkt Kaffee", "trinken Kaffee"),
    ("running", "läuft", "laufen"),
    ("sitting on a bench", "sitzt auf einer Bank", "sitzen auf einer Bank"),
    ("standing", "steht", "stehen"),
    ("sleeping", "schläft", "schlafen"),
    ("swimming", "schwimmt", "schwimmen"),
    ("singing a song", "singt ein Lied", "singen ein Lied"),
    ("looking at the water", "schaut auf das Wasser", "schauen auf das Wasser"),
    ("waiting for the bus", "wartet auf den Bus", "warten auf den Bus"),
    ("carrying a bag", "trägt eine Tasche", "tragen eine Tasche"),
]  # fmt: skip
_PLACES_EN_DE = [
    ("", ""),
    (" in the park", " im Park"),
    (" on the street", " auf der Straße"),
    (" at the beach", " am Strand"),
    (" in the snow", " im Schnee"),
    (" in front of a house", " vor einem Haus"),
    (" near the river", " in der Nähe des Flusses"),
    (" in the city", " in der Stadt"),
    (" in the garden", " im Garten"),
]  # fmt: skip


def translation_pairs(count: int, rng: random.Random, seen: set[str]) -> list[tuple[str, str]]:
    """Distinct (English, German) sentence pairs like "A man is playing guitar." / "Ein Mann spielt
    Gitarre." (a Multi30k-like register, grammar agreeing in number)."""

    def draw(_: int) -> tuple[str, tuple[str, str]]:
        subj_en, subj_de, plural = rng.choice(_SUBJECTS_EN_DE)
        verb_en, verb_de_sg, verb_de_pl = rng.choice(_VERB_PHRASES)
        place_en, place_de = rng.choice(_PLACES_EN_DE)
        english = f"{subj_en} {'are' if plural else 'is'} {verb_en}{place_en}."
        german = f"{subj_de} {verb_de_pl if plural else verb_de_sg}{place_de}."
        return english, (english, german)

    return _distinct(count, draw, seen)


# --- pretraining corpus -----------------------------------------------------------------------


def corpus_documents(count: int, rng: random.Random) -> list[list[str]]:
    """Documents of 4-8 related sentences (one topic each), for MLM+NSP demos."""
    documents = []
    for _ in range(count):
        topic = rng.choice(["review", "scene"])
        length = rng.randint(4, 8)
        if topic == "review":
            positive = rng.random() < 0.5
            sentences = [
                rng.choice(_SENTIMENT_TEMPLATES)(rng, positive).replace(" .", ".").capitalize()
                for _ in range(length)
            ]
        else:
            sentences = [_nli_pair(rng, "entailment")[0] for _ in range(length)]
        documents.append(sentences)
    return documents


# --- writing ------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_sample_data(out: Path, seed: int = 0, sizes: SampleSizes = SIZES) -> dict[str, Path]:
    """Write every sample file under `out`; returns name -> path (e.g. "sentiment/train")."""
    out = Path(out)
    rng = random.Random(seed)
    paths: dict[str, Path] = {}

    seen_sentences: set[str] = set()  # shared by train and dev: no dev sentence is in train
    for split, n in (("train", sizes.sentiment_train), ("dev", sizes.sentiment_dev)):
        rows = sentiment_examples(n, rng, seen_sentences)
        path = paths[f"sentiment/{split}"] = out / "sentiment" / f"{split}.tsv"
        _write_lines(path, ["label\tsentence", *(f"{label}\t{text}" for label, text in rows)])

    seen_pairs: set[tuple[str, str]] = set()
    for split, n in (("train", sizes.nli_train), ("dev", sizes.nli_dev)):
        nli_rows = nli_examples(n, rng, seen_pairs)
        path = paths[f"nli/{split}"] = out / "nli" / f"{split}.tsv"
        _write_lines(path, ["premise\thypothesis\tlabel", *("\t".join(r) for r in nli_rows)])

    seen_english: set[str] = set()
    for split, n in (("train", sizes.translation_train), ("dev", sizes.translation_dev)):
        pairs = translation_pairs(n, rng, seen_english)
        for lang, column in (("en", 0), ("de", 1)):
            path = paths[f"translation/{split}.{lang}"] = out / "translation" / f"{split}.{lang}"
            _write_lines(path, [pair[column] for pair in pairs])

    docs = corpus_documents(sizes.corpus_documents, rng)
    path = paths["corpus/pretrain"] = out / "corpus" / "pretrain.txt"
    _write_lines(path, [line for i, doc in enumerate(docs) for line in ([""] if i else []) + doc])
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")


def run(args: argparse.Namespace) -> int:
    paths = write_sample_data(args.out, seed=args.seed)
    for name, path in paths.items():
        rows = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{name:<24} {path}  ({rows} lines)")
    return 0
