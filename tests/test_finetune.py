"""Fine-tuning: checkpoints, learning on sample data, gradient accumulation, DDP on CPU."""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_src.bert.heads import SequenceClassifier
from model_src.bert.hf_checkpoint import default_checkpoint_dir, load_pretrained_bert
from model_src.bert.tokenization import load_tokenizer
from model_src.classifier import train as finetune
from model_src.classifier.checkpoint import build_classifier, load_classifier
from model_src.classifier.data import ReaderConfig, read_labelled
from model_src.classifier.dataset import Collator, EncodedDataset
from model_src.classifier.evaluate import evaluate_dataset

REPO = Path(__file__).resolve().parents[1]


def train_args(task: str, train: Path, dev: Path, out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    args = parser.parse_args(["--train", str(train), "--dev", str(dev), "--out", str(out), *extra])
    args.task = task
    return args


def test_finetune_tiny_bert_writes_a_loadable_checkpoint_that_beats_chance(
    tiny_init: Path, sample: Path, tmp_path: Path
) -> None:
    """Two epochs on the sample sentiment data write config (labels, task, best), weights,
    tokenizer, metrics.jsonl and the PNG curve; the reloaded model scores well above chance."""
    out = tmp_path / "sentiment"
    args = train_args(
        "classifier", sample / "sentiment/train.tsv", sample / "sentiment/dev.tsv", out,
        "--init", str(tiny_init), "--epochs", "2", "--batch-size", "16", "--lr", "3e-3",
        "--dropout", "0", "--eval-every", "20", "--threads", "1",
    )  # fmt: skip
    assert finetune.run(args) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model, config, tokenizer = load_classifier(out)
    assert config["format"] == "nlpserve-classifier" and config["task"] == "text-classification"
    assert config["labels"] == ["negative", "positive"]
    assert config["encoder"]["hidden_size"] == 32 and config["init"] == str(tiny_init)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [20, 25, 40, 50]  # every 20 steps and at epoch ends
    assert config["best"]["dev_accuracy"] == max(r["accuracy"] for r in dev)

    data = read_labelled(sample / "sentiment/dev.tsv")
    dataset = EncodedDataset(data.examples, tokenizer, config["max_length"])
    result = evaluate_dataset(model, dataset, config["labels"], 64, torch.device("cpu"))
    assert result["accuracy"] == pytest.approx(config["best"]["dev_accuracy"])
    assert result["accuracy"] >= 0.8  # chance is 0.5


def test_finetune_nli_pairs_writes_a_pair_classifier(
    tiny_init: Path, sample: Path, tmp_path: Path
) -> None:
    """`train nli` reads premise/hypothesis pairs and writes a three-label pair classifier;
    with --freeze-embeddings the word embeddings stay those of --init while the rest trains."""
    out = tmp_path / "nli"
    args = train_args(
        "nli", sample / "nli/train.tsv", sample / "nli/dev.tsv", out, "--init", str(tiny_init),
        "--epochs", "1", "--max-train-examples", "64", "--batch-size", "16", "--lr", "1e-3",
        "--freeze-embeddings", "--threads", "1",
    )  # fmt: skip
    assert finetune.run(args) == 0
    model, config, _ = load_classifier(out)
    assert config["task"] == "text-pair-classification"
    assert config["labels"] == ["entailment", "neutral", "contradiction"]
    assert model.classifier.out_features == 3
    assert config["training"]["steps"] == 4  # 64 examples / 16
    init = load_pretrained_bert(tiny_init)
    assert torch.equal(model.encoder.embeddings.word.weight, init.embeddings.word.weight)
    assert not torch.equal(model.encoder.embeddings.norm.weight, init.embeddings.norm.weight)


def test_several_train_files_are_concatenated_in_order(
    tiny_init: Path, sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--train A B` trains on the rows of both files (a second corpus beside the first); the
    checkpoint records both paths; a missing second file is a clean error naming it."""
    header, *rows = (sample / "nli/train.tsv").read_text().splitlines()
    first, second = tmp_path / "first.tsv", tmp_path / "second.tsv"
    first.write_text("\n".join([header, *rows[:48]]) + "\n")
    second.write_text("\n".join([header, *rows[48:80]]) + "\n")
    out = tmp_path / "nli"
    common = (
        "--init", str(tiny_init), "--epochs", "1", "--batch-size", "16", "--threads", "1",
        "--eval-every", "0",
    )  # fmt: skip
    args = train_args("nli", first, sample / "nli/dev.tsv", out, *common)
    args.train = [first, second]
    assert finetune.run(args) == 0
    _, config, _ = load_classifier(out)
    assert config["train_args"]["train"] == [str(first), str(second)]
    assert config["training"]["steps"] == 5  # (48 + 32) examples / 16

    args.train = [first, tmp_path / "missing.tsv"]
    args.out = tmp_path / "nli-missing"
    assert finetune.run(args) == 2
    assert "missing.tsv" in capsys.readouterr().err


def test_init_from_a_finetuned_checkpoint_continues_with_its_encoder_and_head(
    tiny_init: Path, sample: Path, tmp_path: Path
) -> None:
    """--init accepts one of our fine-tuned checkpoints (a second, lower-lr stage): the model
    built from it starts with exactly the previous weights, head included; a checkpoint with a
    different label count keeps the encoder and gets a fresh head."""
    first = tmp_path / "first"
    args = train_args(
        "classifier", sample / "sentiment/train.tsv", sample / "sentiment/dev.tsv", first,
        "--init", str(tiny_init), "--epochs", "1", "--max-train-examples", "32",
        "--batch-size", "16", "--threads", "1",
    )  # fmt: skip
    assert finetune.run(args) == 0
    previous, _, _ = load_classifier(first)

    continued, init_dir = build_classifier(first, num_labels=2)
    assert init_dir == first
    for (name, want), got in zip(
        previous.state_dict().items(), continued.state_dict().values(), strict=True
    ):
        assert torch.equal(want, got), name

    three_way, _ = build_classifier(first, num_labels=3)
    assert three_way.classifier.out_features == 3
    assert torch.equal(
        three_way.encoder.embeddings.word.weight, previous.encoder.embeddings.word.weight
    )


def test_gradient_accumulation_equals_the_larger_batch(tiny_init: Path, sample: Path) -> None:
    """One step over micro-batches of 5 + 3 examples moves the weights exactly as one step over
    the 8 together (dropout off; plain SGD so the update is proportional to the gradient)."""
    tokenizer = load_tokenizer(tiny_init, max_length=64)
    data = read_labelled(sample / "sentiment/train.tsv", ReaderConfig())
    dataset = EncodedDataset(data.examples[:8], tokenizer, 64)
    collate = Collator()
    whole = [collate([dataset[i] for i in range(8)])]
    parts = [collate([dataset[i] for i in range(5)]), collate([dataset[i] for i in range(5, 8)])]
    model, _ = build_classifier(tiny_init, num_labels=2, dropout=0.0)
    twin = copy.deepcopy(model)
    for net, batches in ((model, whole), (twin, parts)):
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        finetune.train_step(net, batches, optimizer, None, 0.0, torch.device("cpu"))
    start, _ = build_classifier(tiny_init, num_labels=2, dropout=0.0)
    moved = 0.0
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        if name.startswith("encoder."):  # (the fresh head's init differs from `start`'s)
            moved = max(moved, float((a - start.state_dict()[name]).abs().max()))
    assert moved > 1e-4  # the step did change the encoder


def test_torchrun_data_parallel_on_cpu_writes_one_checkpoint(
    tiny_init: Path, sample: Path, tmp_path: Path
) -> None:
    """`torchrun --nproc_per_node 2 -m model_src train classifier` trains with DDP over gloo on
    CPU: both ranks finish, one checkpoint and one metrics file are written by rank 0."""
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "model_src", "train", "classifier",
        "--train", str(sample / "sentiment/train.tsv"), "--dev", str(sample / "sentiment/dev.tsv"),
        "--init", str(tiny_init), "--out", str(out), "--epochs", "1",
        "--max-train-examples", "128", "--batch-size", "16", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # Own session, so a hung rendezvous can be killed with all its worker processes.
    with subprocess.Popen(
        command, cwd=REPO, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "metrics.jsonl", "model.safetensors", "resume.pt",
        "tokenizer.json", "tokenizer_config.json", "train_log.txt", "training_curve.png",
        "vocab.txt",
    ]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["world_size"] == 2
    assert config["training"]["steps"] == 4  # 128 examples / (16 per rank x 2 ranks)
    dev = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"dev"' in line
    ]
    assert len(dev) == 1 and sum(1 for line in stdout.splitlines() if "best dev" in line) == 1
    load_classifier(out)


def test_training_from_the_packaged_minilm_by_default(sample: Path, tmp_path: Path) -> None:
    """Without --init the packaged MiniLM-L6 is fine-tuned (a few steps) and its config travels
    with the checkpoint."""
    out = tmp_path / "minilm"
    args = train_args(
        "classifier", sample / "sentiment/train.tsv", sample / "sentiment/dev.tsv", out,
        "--epochs", "1", "--max-train-examples", "16", "--batch-size", "8", "--max-length", "32",
        "--threads", "1",
    )  # fmt: skip
    assert finetune.run(args) == 0
    model, config, _ = load_classifier(out)
    assert config["init"] == str(default_checkpoint_dir())
    assert config["encoder"]["hidden_size"] == 384 and config["encoder"]["num_hidden_layers"] == 6
    assert isinstance(model, SequenceClassifier)


def test_missing_init_directory_is_a_clean_error(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --init directory that does not exist ends with one error line and exit code 2."""
    args = train_args(
        "classifier", sample / "sentiment/train.tsv", sample / "sentiment/dev.tsv",
        tmp_path / "out", "--init", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert finetune.run(args) == 2
    assert capsys.readouterr().err.startswith("error: ")
