"""The project's own sample data: deterministic, the documented sizes, readable as-is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from model_src.classifier.data import ReaderConfig, read_labelled
from model_src.sample_data import SIZES, write_sample_data

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    """Two runs with seed 0 write byte-identical files; seed 1 writes different sentences."""
    write_sample_data(tmp_path / "a", seed=0)
    write_sample_data(tmp_path / "b", seed=0)
    write_sample_data(tmp_path / "c", seed=1)
    a, b, c = (snapshot(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_files_have_the_documented_sizes_and_balanced_labels(tmp_path: Path) -> None:
    """Sentiment and NLI files read with the default readers (no bad rows) in the documented
    sizes with balanced labels; translation files are line-aligned; the corpus has documents."""
    paths = write_sample_data(tmp_path)
    for split, size in (("train", SIZES.sentiment_train), ("dev", SIZES.sentiment_dev)):
        data = read_labelled(paths[f"sentiment/{split}"])
        assert len(data.examples) == size and not data.bad_rows
        assert data.label_counts() == {"negative": size // 2, "positive": size // 2}
    for split, size in (("train", SIZES.nli_train), ("dev", SIZES.nli_dev)):
        data = read_labelled(paths[f"nli/{split}"], ReaderConfig(task="nli"))
        assert len(data.examples) == size and not data.bad_rows
        assert set(data.label_counts().values()) == {size // 3}
    for split, size in (("train", SIZES.translation_train), ("dev", SIZES.translation_dev)):
        en = paths[f"translation/{split}.en"].read_text(encoding="utf-8").splitlines()
        de = paths[f"translation/{split}.de"].read_text(encoding="utf-8").splitlines()
        assert len(en) == len(de) == size and all(en) and all(de)
    corpus = paths["corpus/pretrain"].read_text(encoding="utf-8").split("\n\n")
    assert len(corpus) == SIZES.corpus_documents


def test_dev_never_repeats_a_train_example(tmp_path: Path) -> None:
    """No dev sentence (sentiment), pair (NLI) or source sentence (translation) is in train."""
    paths = write_sample_data(tmp_path)
    for name in ("sentiment", "nli"):
        task = "nli" if name == "nli" else "classifier"
        train, dev = (
            {
                (e.text, e.text_pair)
                for e in read_labelled(paths[f"{name}/{s}"], ReaderConfig(task=task)).examples
            }
            for s in ("train", "dev")
        )
        assert not train & dev
    train_en, dev_en = (
        set(paths[f"translation/{s}.en"].read_text().splitlines()) for s in ("train", "dev")
    )
    assert not train_en & dev_en


def test_translation_pairs_follow_the_templates(tmp_path: Path) -> None:
    """English and German lines correspond (e.g. "A man is playing guitar." -> "Ein Mann spielt
    Gitarre."): the subject and verb of line i appear in both languages."""
    paths = write_sample_data(tmp_path)
    en = paths["translation/train.en"].read_text(encoding="utf-8").splitlines()
    de = paths["translation/train.de"].read_text(encoding="utf-8").splitlines()
    pairs = dict(zip(en, de, strict=True))
    for english, german in pairs.items():
        if english.startswith("A man is playing guitar"):
            assert german.startswith("Ein Mann spielt Gitarre")
        if english.startswith("Two dogs are"):
            assert german.startswith("Zwei Hunde ")
        assert english.endswith(".") and german.endswith(".")


def test_cli_writes_the_sample_data(tmp_path: Path) -> None:
    """`python -m model_src sample-data --out DIR` writes every file and lists them."""
    proc = subprocess.run(
        [sys.executable, "-m", "model_src", "sample-data", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sentiment" / "train.tsv").is_file()
    assert (tmp_path / "translation" / "dev.de").is_file()
    assert "nli/train" in proc.stdout
