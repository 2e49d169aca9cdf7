"""Readers, bad-row handling, collate and the length-bucketing sampler (model_src.classifier)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_src.bert.hf_checkpoint import default_checkpoint_dir
from model_src.bert.tokenization import load_tokenizer
from model_src.classifier.data import DataError, ReaderConfig, read_labelled
from model_src.classifier.dataset import Collator, EncodedDataset, LengthBucketBatchSampler

REPO = Path(__file__).resolve().parents[1]

SST2_LIKE = (
    "label\tsentence\n"
    "0\thide new secretions from the parental units\n"
    '1\t" the best " film of the year , and it does n\'t stop\n'
    "1\tthe `` gorgeously elaborate '' continuation\n"
    "0\tcontains no wit , only labored gags\n"
)
SNLI_LIKE = (
    "premise\thypothesis\tlabel\n"
    "A man is playing guitar.\tA person plays music.\tentailment\n"
    '"Quoted" premise, with a comma.\tSomeone is outside.\tneutral\n'
    "Two dogs run on grass.\tThe dogs are asleep.\tcontradiction\n"
)


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_sst2_shaped_tsv_reads_without_options(tmp_path: Path) -> None:
    """SST-2's `label<TAB>sentence` file reads as is: 0/1 become negative/positive, and a `"`
    at the start of a field stays text (no quoting)."""
    data = read_labelled(write(tmp_path / "train.tsv", SST2_LIKE))
    assert data.labels == ("negative", "positive")
    assert [e.label for e in data.examples] == [0, 1, 1, 0]
    assert data.examples[1].text == '" the best " film of the year , and it does n\'t stop'
    assert data.examples[2].text == "the `` gorgeously elaborate '' continuation"
    assert data.examples[0].text_pair is None
    assert data.bad_rows == [] and data.rows_read == 4


def test_snli_shaped_gzip_tsv_reads_without_options(tmp_path: Path) -> None:
    """SNLI's gzipped `premise<TAB>hypothesis<TAB>label` file reads as pairs with its labels."""
    data = read_labelled(write(tmp_path / "train.tsv.gz", SNLI_LIKE), ReaderConfig(task="nli"))
    assert data.labels == ("entailment", "neutral", "contradiction")
    assert [e.label for e in data.examples] == [0, 1, 2]
    assert data.examples[1].text == '"Quoted" premise, with a comma.'
    assert data.examples[1].text_pair == "Someone is outside."
    assert data.examples[2].line == 4  # 1-based, header is line 1


def test_csv_jsonl_and_headerless_files_with_configured_columns(tmp_path: Path) -> None:
    """CSV (standard quoting), JSONL (keys) and a headerless TSV (positions) read with the columns
    given by name or index, and custom label names and raw-label maps apply."""
    csv_file = write(
        tmp_path / "reviews.csv", 'id,review,stars\n1,"Great, really great",pos\n2,Awful,neg\n'
    )
    config = ReaderConfig(
        text_column="review", label_column="stars", label_map={"pos": "good", "neg": "bad"},
        labels=("bad", "good"),
    )  # fmt: skip
    data = read_labelled(csv_file, config)
    assert [(e.text, e.label) for e in data.examples] == [("Great, really great", 1), ("Awful", 0)]

    rows = [{"s1": "a b", "s2": "c", "y": "neutral"}, {"s1": "d", "s2": "e", "y": "entailment"}]
    jsonl = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_labelled(
        jsonl, ReaderConfig(task="nli", text_column="s1", pair_column="s2", label_column="y")
    )
    assert [(e.text, e.text_pair, e.label) for e in pairs.examples] == [
        ("a b", "c", 1),
        ("d", "e", 0),
    ]

    headerless = write(tmp_path / "plain.tsv", "x\tgood movie\t1\ny\tbad movie\t0\n")
    plain = read_labelled(headerless, ReaderConfig(header=False, text_column=1, label_column=2))
    assert [(e.text, e.label) for e in plain.examples] == [("good movie", 1), ("bad movie", 0)]


def test_bad_rows_are_reported_with_file_line_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows with a missing or unknown label, empty text or the wrong column count are skipped,
    each logged as file:line: reason, and counted; the good rows still load."""
    text = (
        "label\tsentence\n"
        "1\tfine row\n"
        "\tno label here\n"  # line 3
        "7\tunknown label\n"  # line 4
        "0\t   \n"  # line 5
        "1\ttoo\tmany columns\n"  # line 6
        "0\tanother fine row\n"
    )
    path = write(tmp_path / "dirty.tsv", text)
    with caplog.at_level(logging.WARNING, logger="model_src.classifier.data"):
        data = read_labelled(path, ReaderConfig(max_bad_fraction=0.9))
    assert [e.text for e in data.examples] == ["fine row", "another fine row"]
    assert [(b.line, b.reason.split(" (")[0]) for b in data.bad_rows] == [
        (3, "missing label"),
        (4, "unknown label '7'"),
        (5, "empty text"),
        (6, "3 columns, expected 2"),
    ]
    assert data.rows_read == 6
    assert f"{path}:4: unknown label '7'" in caplog.text
    assert "4 of 6 rows skipped" in caplog.text


def test_too_many_bad_rows_stop_the_read(tmp_path: Path) -> None:
    """A file whose bad-row fraction passes the threshold raises DataError naming the counts,
    the first bad row and the unknown labels seen."""
    rows = "".join(f"{i % 2}\tgood row {i}\n" for i in range(97)) + "x\tbad\ny\tbad\nz\tbad\n"
    path = write(tmp_path / "train.tsv", "label\tsentence\n" + rows)
    with pytest.raises(DataError) as err:
        read_labelled(path, ReaderConfig(max_bad_fraction=0.01))
    message = str(err.value)
    assert "3 of 100 rows are bad" in message
    assert f"{path}:99: unknown label 'x'" in message
    assert "--labels" in message and "\n" not in message
    assert len(read_labelled(path, ReaderConfig(max_bad_fraction=0.05)).examples) == 97


def test_cli_reports_bad_data_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    """`python -m model_src train classifier` on a file full of bad rows prints one error line
    and exits 2, without a traceback."""
    rows = "1\tgood text\n" * 5 + "maybe\tsome text\n" * 10
    bad = write(tmp_path / "bad.tsv", "label\tsentence\n" + rows)
    proc = subprocess.run(
        [sys.executable, "-m", "model_src", "train", "classifier", "--train", str(bad),
         "--dev", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "10 of 15 rows are bad" in errors[0] and "'maybe'" in errors[0]


def test_missing_file_and_unknown_column_are_data_errors(tmp_path: Path) -> None:
    """A missing file, an unknown extension and a column absent from the header raise DataError."""
    with pytest.raises(DataError, match="no such file"):
        read_labelled(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="unknown file type"):
        read_labelled(write(tmp_path / "data.xlsx", "x"))
    with pytest.raises(DataError, match="no column 'review'"):
        read_labelled(write(tmp_path / "t.tsv", SST2_LIKE), ReaderConfig(text_column="review"))


def test_collate_pads_to_the_batch_maximum_with_segment_ids() -> None:
    """Pairs are encoded [CLS] a [SEP] b [SEP] with segment ids 0/1; collate pads to the longest
    item of the batch with [PAD]=0 and a 0 attention mask, and truncation keeps max_length."""
    from model_src.classifier.data import Example

    tokenizer = load_tokenizer(default_checkpoint_dir())
    examples = [
        Example("a man plays", "music", 0, 2),
        Example("a much longer premise about two dogs running", "dogs run", 2, 3),
        Example(" ".join(["word"] * 50), "x", 1, 4),
    ]
    dataset = EncodedDataset(examples, tokenizer, max_length=16)
    assert (
        dataset.lengths[0] == 7 and dataset.lengths[2] == 16
    )  # [CLS] a man plays [SEP] music [SEP]
    batch = Collator(pad_id=0)([dataset[0], dataset[1]])
    longest = dataset.lengths[1]
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * (longest - 7)
    assert batch["input_ids"][0, 7:].eq(0).all()
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1] + [0] * (longest - 7)
    assert batch["labels"].tolist() == [0, 2]


def test_length_bucket_sampler_covers_data_and_cuts_padding() -> None:
    """One epoch yields every index exactly once, in batches of similar length (far less padding
    than random batches), reshuffled by set_epoch and repeatable for a seed."""
    import random

    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    sampler = LengthBucketBatchSampler(lengths, batch_size=16, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + 16] for i in range(0, 1000, 16)]
    assert padding(batches) < padding(random_batches) / 5
    assert list(LengthBucketBatchSampler(lengths, 16, seed=1)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_length_bucket_sampler_shards_like_distributed_sampler() -> None:
    """With two replicas each rank gets the same number of batches, the shards are disjoint
    apart from DistributedSampler-style padding, and together they cover every index."""
    lengths = list(range(1, 102))  # 101 items: one repeat pads it to 2 x 51
    ranks = [LengthBucketBatchSampler(lengths, 8, seed=3, num_replicas=2, rank=r) for r in range(2)]
    shards = [[i for b in sampler for i in b] for sampler in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(list(ranks[0])) == 7
    assert len(shards[0]) == len(shards[1]) == 51
    assert set(shards[0]) | set(shards[1]) == set(range(101))
    assert len(set(shards[0]) & set(shards[1])) <= 1
