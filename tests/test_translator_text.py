"""The translator's text side: joint BPE tokenizer, parallel readers, token-budget batches."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from model_src.translator.data import bucket_batches, collate, read_parallel, shard_batches
from model_src.translator.tokenizer import (
    EOS_ID,
    PAD_ID,
    SOS_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    decode,
    encode,
    load_tokenizer,
    train_joint_bpe,
)

EN = [
    "Two young, White males are outside near many bushes.",
    "A man in an orange hat starring at something.",
    "A little girl climbing into a wooden playhouse.",
    'Several men in hard hats are operating a "giant" pulley system.',
]
DE = [
    "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "Mehrere Männer mit Schutzhelmen bedienen ein Antriebsradsystem.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_joint_bpe(EN + DE, vocab_size=300, min_frequency=1)


def test_special_tokens_have_fixed_ids(tokenizer, tmp_path: Path) -> None:
    """<pad>,<sos>,<eos>,<unk> are ids 0..3, also after a save/load round trip."""
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = load_tokenizer(path)
    assert [loaded.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, SOS_ID, EOS_ID, UNK_ID]
    assert (PAD_ID, SOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)


def test_training_the_vocabulary_twice_gives_the_same_ids() -> None:
    """tokenizers' trainer numbers the word-final characters in a different order from run to
    run when word ends are marked (and breaks ties by those numbers); train_joint_bpe fixes them,
    so a rebuilt model is the same model."""
    texts = EN + DE
    assert (
        len({train_joint_bpe(texts, vocab_size=300, min_frequency=1).to_str() for _ in range(6)})
        == 1
    )


def test_tokenizer_round_trips_text_in_both_languages(tokenizer) -> None:
    """decode(encode(text)) gives the text back exactly (spaces, case, punctuation, umlauts),
    and every encoding ends with exactly one <eos>."""
    ids = encode(tokenizer, EN + DE, max_length=256)
    assert all(seq[-1] == EOS_ID and seq.count(EOS_ID) == 1 for seq in ids)
    assert decode(tokenizer, ids) == EN + DE


def test_unknown_characters_map_to_unk(tokenizer) -> None:
    """A character never seen in training becomes <unk> instead of failing or vanishing."""
    ids = encode(tokenizer, ["A man 你"], max_length=32)[0]
    assert UNK_ID in ids


def test_truncation_keeps_eos(tokenizer) -> None:
    """Sequences longer than max_length are cut to max_length and still end with <eos>."""
    ids = encode(tokenizer, [DE[0]], max_length=5)[0]
    assert len(ids) == 5 and ids[-1] == EOS_ID


def test_decode_stops_at_first_eos(tokenizer) -> None:
    """Anything a decoder emitted after <eos> is not part of the text."""
    a = encode(tokenizer, ["A man"], 16)[0]
    b = encode(tokenizer, ["girl"], 16)[0]
    assert decode(tokenizer, [a + b]) == ["A man"]


def test_read_parallel_reads_gzip_and_checks_alignment(tmp_path: Path) -> None:
    """.gz files read like plain ones; files of different line counts are refused."""
    src, tgt = tmp_path / "s.en.gz", tmp_path / "t.de"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("\n".join(EN) + "\n")
    tgt.write_text("\n".join(DE) + "\n", encoding="utf-8")
    assert read_parallel(src, tgt) == (EN, DE)
    tgt.write_text("\n".join(DE[:3]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not line-aligned"):
        read_parallel(src, tgt)


def test_bucketed_batches_respect_the_token_budget() -> None:
    """Every example lands in exactly one batch, and batch size x longest sequence (source or
    target) never exceeds the padded-token budget."""
    rng = random.Random(0)
    src = [rng.randint(2, 60) for _ in range(2000)]
    tgt = [rng.randint(2, 60) for _ in range(2000)]
    budget = 512
    batches = bucket_batches(src, tgt, max_tokens=budget, shuffle=True, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    for batch in batches:
        assert len(batch) * max(max(src[i], tgt[i]) for i in batch) <= budget
    # Bucketing keeps padding low: the mean fill is high.
    fill = sum(src[i] for b in batches for i in b) / sum(
        len(b) * max(src[i] for i in b) for b in batches
    )
    assert fill > 0.8


def test_shards_have_equal_batch_counts() -> None:
    """Under DDP every rank gets the same number of batches (no rank waits forever)."""
    batches = [[i] for i in range(11)]
    shards = [shard_batches(batches, r, 4) for r in range(4)]
    assert {len(s) for s in shards} == {2}
    assert len({i for s in shards for b in s for i in b}) == 8


def test_collate_shifts_targets_for_teacher_forcing() -> None:
    """The decoder reads <sos> y1..yn and predicts y1..yn <eos>; padding is PAD_ID."""
    batch = collate([[5, 6, EOS_ID], [7, EOS_ID]], [[8, 9, EOS_ID], [10, EOS_ID]])
    assert batch.src.tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.tgt_in.tolist() == [[SOS_ID, 8, 9], [SOS_ID, 10, PAD_ID]]
    assert batch.tgt_out.tolist() == [[8, 9, EOS_ID], [10, EOS_ID, PAD_ID]]
    assert batch.num_target_tokens == 5


def test_word_ends_are_marked_and_let_a_stream_send_a_word_a_step_sooner(tokenizer) -> None:
    """The translator's vocabulary marks a word's last subword (WORD_END), the serving encoder
    reads which ids those are from tokenizer.json, and a stream's whole words then include a word
    as soon as its last subword is decoded; a BERT WordPiece vocabulary has no such marks."""
    from types import SimpleNamespace

    from model_src.bert.hf_checkpoint import default_checkpoint_dir
    from model_src.translator.tokenizer import WORD_END
    from service.engines.tokenization import TextEncoder
    from service.engines.translator import TranslatorEngine

    served = TextEncoder(tokenizer.to_str(), max_length=64)
    marked = {i for token, i in tokenizer.get_vocab().items() if token.endswith(WORD_END)}
    assert served.word_end_ids == marked and len(marked) > 50
    ids = encode(tokenizer, ["Zwei junge Männer."], max_length=64)[0][:-1]  # without <eos>
    assert ids[0] in marked  # "▁Zwei</w>": a whole word in one subword

    def whole(word_end_ids: frozenset[int] | None, prefix: list[int]) -> str:
        engine = SimpleNamespace(
            finish=lambda s: served.decode([s])[0],
            encoder=SimpleNamespace(word_end_ids=word_end_ids),
        )
        return TranslatorEngine.whole_words(engine, prefix)  # type: ignore[arg-type]

    assert whole(served.word_end_ids, ids[:1]) == "Zwei"  # at once
    assert whole(None, ids[:1]) == "" and whole(None, ids[:2]) == "Zwei"  # a step later
    assert whole(served.word_end_ids, ids) == "Zwei junge Männer."
    wordpiece = (default_checkpoint_dir() / "tokenizer.json").read_text()
    assert TextEncoder(wordpiece, max_length=64).word_end_ids is None


def test_punctuation_inside_a_word_stays_in_it_so_the_word_ends_once() -> None:
    """A hyphen or apostrophe between letters stays inside its word ("T-Shirt", "Mann's"), so
    only the word's last subword is marked and a stream sends it as one piece; punctuation at a
    word's edge is still a word of its own ("Hund." -> "Hund", "."), as are "--" and brackets."""
    from model_src.translator.tokenizer import WORD_END

    texts = ["Ein Mann im T-Shirt, der Mann's Hund.", "Ein (roter) Hund -- 3.5 Meter."] * 2
    tokenizer = train_joint_bpe(texts, vocab_size=120, min_frequency=1)

    def words(text: str) -> list[str]:
        return [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]

    assert words(texts[0]) == [
        "▁Ein",
        "▁Mann",
        "▁im",
        "▁T-Shirt",
        ",",
        "▁der",
        "▁Mann's",
        "▁Hund",
        ".",
    ]
    assert words(texts[1]) == [
        "▁Ein",
        "▁",
        "(",
        "roter",
        ")",
        "▁Hund",
        "▁",
        "-",
        "-",
        "▁3.5",
        "▁Meter",
        ".",
    ]
    for text in texts[:2]:
        tokens = tokenizer.encode(text).tokens[:-1]  # without <eos>
        marked = [t for t in tokens if t.endswith(WORD_END)]
        assert len(marked) == len(words(text))  # one mark per word, however it is split
        assert decode(tokenizer, [tokenizer.encode(text).ids]) == [text]
    hyphenated = train_joint_bpe(texts, vocab_size=40, min_frequency=1).encode("T-Shirt").tokens
    assert len(hyphenated) > 2 and hyphenated[-2].endswith(WORD_END)  # [-1] is <eos>
    assert not any(t.endswith(WORD_END) for t in hyphenated[:-2])  # no mark inside the word
