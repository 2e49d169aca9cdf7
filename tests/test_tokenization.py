"""Tokenization: loading (tokenizer.json / vocab.txt), single and pair encoding, truncation,
padding, and training a WordPiece vocabulary."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from model_src.bert.hf_checkpoint import default_checkpoint_dir
from model_src.bert.tokenization import (
    SPECIAL_TOKENS,
    add_train_arguments,
    encode_batch,
    load_tokenizer,
    pad_encodings,
    run_train,
)

REAL_SENTENCES = [
    "A man in a blue shirt is riding his bicycle down the street.",
    "It's a charming and often affecting journey.",
    "The café's crème brûlée wasn't worth $12.50 — honestly!",
    "Zwei Männer spielen Fußball im Park.",
    "東京 is the capital of Japan, isn't it?",
    "unaffordable hyperparameterization ###weird### tokens\tand\nwhitespace",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(default_checkpoint_dir())


def tokens(tokenizer: Tokenizer, ids: list[int]) -> list[str | None]:
    return [tokenizer.id_to_token(i) for i in ids]


def test_single_text_is_cls_text_sep_with_segment_zero(tokenizer: Tokenizer) -> None:
    """A single text encodes as [CLS] pieces [SEP], lower-cased, all segment ids 0."""
    enc = encode_batch(tokenizer, ["Hello World"])
    assert tokens(tokenizer, enc.input_ids[0]) == ["[CLS]", "hello", "world", "[SEP]"]
    assert enc.token_type_ids[0] == [0, 0, 0, 0]
    assert enc.attention_mask[0] == [1, 1, 1, 1]


def test_pair_has_segment_ids_zero_then_one(tokenizer: Tokenizer) -> None:
    """A pair encodes as [CLS] a [SEP] b [SEP]; segment 0 up to the first [SEP], then 1."""
    enc = encode_batch(tokenizer, ["a dog runs"], ["an animal moves"])
    assert tokens(tokenizer, enc.input_ids[0]) == [
        "[CLS]", "a", "dog", "runs", "[SEP]", "an", "animal", "moves", "[SEP]",
    ]  # fmt: skip
    assert enc.token_type_ids[0] == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_pair_truncation_is_longest_first(tokenizer: Tokenizer) -> None:
    """Truncating a long premise + short hypothesis to max_length trims the premise first and
    keeps both [SEP]s and the whole hypothesis."""
    premise = " ".join(["word"] * 40)
    enc = encode_batch(tokenizer, [premise], ["a short one"], max_length=16)
    ids = enc.input_ids[0]
    assert len(ids) == 16
    assert tokens(tokenizer, ids)[-5:] == ["[SEP]", "a", "short", "one", "[SEP]"]
    assert enc.token_type_ids[0].count(1) == 4  # the hypothesis and its [SEP]
    # Two long sides are trimmed to (nearly) equal length.
    enc = encode_batch(tokenizer, [premise], [premise], max_length=21)
    assert enc.token_type_ids[0].count(0) - 2 == enc.token_type_ids[0].count(1) - 1 == 9


def test_max_length_is_respected_and_restored(tokenizer: Tokenizer) -> None:
    """Every encoding fits max_length and ends with [SEP]; the tokenizer's own setting is
    unchanged afterwards."""
    before = tokenizer.truncation
    enc = encode_batch(tokenizer, REAL_SENTENCES, max_length=8)
    assert all(len(ids) <= 8 for ids in enc.input_ids)
    assert all(tokenizer.id_to_token(ids[-1]) == "[SEP]" for ids in enc.input_ids)
    assert tokenizer.truncation == before
    limited = load_tokenizer(default_checkpoint_dir(), max_length=10)
    assert max(len(e.ids) for e in limited.encode_batch(REAL_SENTENCES)) == 10


def test_tokenizer_json_and_vocab_txt_agree(tokenizer: Tokenizer, tmp_path: Path) -> None:
    """The package's tokenizer.json and a tokenizer built from its vocab.txt (+ config) give
    identical ids, segment ids and lengths on real sentences, singles and pairs."""
    checkpoint = default_checkpoint_dir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, tmp_path / name)
    from_vocab = load_tokenizer(tmp_path / "vocab.txt")
    for a, b in [
        (encode_batch(tokenizer, REAL_SENTENCES), encode_batch(from_vocab, REAL_SENTENCES)),
        (
            encode_batch(tokenizer, REAL_SENTENCES, REAL_SENTENCES[::-1], max_length=24),
            encode_batch(from_vocab, REAL_SENTENCES, REAL_SENTENCES[::-1], max_length=24),
        ),
    ]:
        assert a.input_ids == b.input_ids
        assert a.token_type_ids == b.token_type_ids


def test_pad_encodings_right_pads_to_longest(tokenizer: Tokenizer) -> None:
    """Padding gives int64 (B, T) tensors: [PAD]=0 ids, 0/1 mask and 0 segment on padding."""
    enc = encode_batch(tokenizer, ["short"], ["pair text here"])
    enc2 = encode_batch(tokenizer, ["a somewhat longer sentence than that"])
    batch = pad_encodings(
        enc.input_ids + enc2.input_ids, enc.token_type_ids + enc2.token_type_ids, pad_id=0
    )
    lengths = [len(enc.input_ids[0]), len(enc2.input_ids[0])]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    for tensor in batch.values():
        assert tensor.dtype == torch.int64
        assert tensor.shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths[0]
    assert batch["input_ids"][0, short:].eq(0).all()
    assert batch["token_type_ids"][0, :short].tolist() == enc.token_type_ids[0]
    assert batch["token_type_ids"][0, short:].eq(0).all()


CORPUS = (
    "the cat sat on the mat.\nthe dog sat on the log.\n"
    "a bird sang in the tree while the cat slept.\n"
    "dogs and cats are common pets in many homes.\n"
) * 50


def test_trained_wordpiece_is_usable(tmp_path: Path) -> None:
    """`tokenizer train` on a small corpus writes tokenizer.json + vocab.txt with the five
    special tokens first; both files load and encode corpus words without [UNK]."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    out = tmp_path / "tok"
    args = parser.parse_args(["--corpus", str(corpus), "--vocab-size", "200", "--out", str(out)])
    assert run_train(args) == 0
    assert (out / "vocab.txt").read_text().splitlines()[:5] == SPECIAL_TOKENS
    for source in (out / "tokenizer.json", out / "vocab.txt"):
        trained = load_tokenizer(source)
        assert [trained.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
        enc = encode_batch(trained, ["The Cat sat on the log."], ["Dogs are pets."])
        pieces = tokens(trained, enc.input_ids[0])
        assert pieces[0] == "[CLS]" and pieces.count("[SEP]") == 2
        assert "[UNK]" not in pieces
        assert "cat" in pieces  # lower-cased by default


def test_train_cli_reports_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing corpus file is a one-line error and exit code 2, not a traceback."""
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path)])
    assert run_train(args) == 2
    assert "corpus file not found" in capsys.readouterr().out


def test_the_serving_encoder_gives_one_text_what_a_batch_gives_it(tokenizer: Tokenizer) -> None:
    """service TextEncoder: one text (or pair) goes through the tokenizer's single-item calls,
    which keep the GIL; its ids, segments, truncation flag and decoded text are those of the
    same text inside a batch (the batch calls), with truncation on."""
    from service.engines.tokenization import TextEncoder

    encoder = TextEncoder(tokenizer.to_str(), max_length=12)
    texts = [*REAL_SENTENCES, "short"]
    batched = encoder.encode(texts)
    assert any(e.truncated for e in batched) and not all(e.truncated for e in batched)
    assert [encoder.encode([t])[0] for t in texts] == batched
    pairs = list(zip(texts, reversed(texts), strict=True))
    assert [encoder.encode_pairs([p])[0] for p in pairs] == encoder.encode_pairs(pairs)
    ids = [e.ids for e in batched]
    assert [encoder.decode([i])[0] for i in ids] == encoder.decode(ids)
