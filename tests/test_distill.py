"""Distillation: teacher soft targets, the KL term, and `train nli --teacher` end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_src.bert.tokenization import load_tokenizer
from model_src.classifier import train as finetune
from model_src.classifier.checkpoint import build_classifier, load_classifier
from model_src.classifier.data import ReaderConfig, read_labelled
from model_src.classifier.dataset import Collator, EncodedDataset
from model_src.classifier.distill import (
    Teacher,
    WithSoftLabels,
    distillation_loss_sum,
    teacher_probabilities,
)

CPU = torch.device("cpu")


def _args(task: str, sample: Path, out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    folder = "nli" if task == "nli" else "sentiment"
    args = parser.parse_args(
        ["--train", str(sample / folder / "train.tsv"), "--dev", str(sample / folder / "dev.tsv"),
         "--out", str(out), "--epochs", "1", "--batch-size", "16", "--threads", "1",
         "--eval-every", "0", *extra]
    )  # fmt: skip
    args.task = task
    return args


@pytest.fixture(scope="module")
def teachers(tiny_init: Path, sample: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny NLI checkpoints of different seeds (different predictions)."""
    out = []
    for seed in (1, 2):
        path = tmp_path_factory.mktemp(f"teacher{seed}")
        args = _args(
            "nli", sample, path, "--init", str(tiny_init), "--lr", "2e-3", "--seed", str(seed),
            "--max-train-examples", "96",
        )  # fmt: skip
        assert finetune.run(args) == 0
        out.append(path)
    return out


def _load(path: Path) -> Teacher:
    model, config, tokenizer = load_classifier(path)
    return Teacher(model, tokenizer, int(config["max_length"]))


def test_teacher_probabilities_are_the_mean_of_each_teachers_softmax(
    teachers: list[Path], sample: Path
) -> None:
    """Each row is the average over teachers of softmax(logits / T), computed here one example
    at a time (so the batched, length-sorted scoring is checked too)."""
    examples = read_labelled(sample / "nli/dev.tsv", ReaderConfig(task="nli")).examples[:20]
    loaded = [_load(t) for t in teachers]
    probs = teacher_probabilities(loaded, examples, 3, temperature=2.0, batch_size=8, device=CPU)
    assert probs.shape == (20, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(20))
    want = torch.zeros(20, 3)
    with torch.no_grad():
        for teacher in loaded:
            dataset = EncodedDataset(examples, teacher.tokenizer, teacher.max_length)
            for i in range(len(examples)):
                b = Collator()([dataset[i]])
                logits = teacher.model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                want[i] += F.softmax(logits.logits[0] / 2.0, dim=-1) / len(loaded)
    torch.testing.assert_close(probs, want, rtol=1e-4, atol=1e-5)
    one = teacher_probabilities(loaded[:1], examples, 3, 2.0, 8, CPU)
    assert not torch.allclose(one, probs, atol=1e-3)  # the second teacher does change the mean


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    at_teacher = F.softmax(student.detach() / 2.0, dim=-1)
    assert float(distillation_loss_sum(student, at_teacher, 2.0).detach()) == pytest.approx(
        0, abs=1e-6
    )

    target = torch.tensor([[0.9, 0.05, 0.05]] * 4)
    before = float(distillation_loss_sum(student, target, 1.0).detach())
    distillation_loss_sum(student, target, 1.0).backward()
    with torch.no_grad():
        moved = student - 0.5 * student.grad
    assert before > 0
    assert float(distillation_loss_sum(moved, target, 1.0)) < before


def test_with_full_weight_only_the_teachers_targets_matter(
    teachers: list[Path], tiny_init: Path, sample: Path
) -> None:
    """distill_weight 1: the step's loss is the KL term alone, whatever the gold labels say."""
    examples = read_labelled(sample / "nli/train.tsv", ReaderConfig(task="nli")).examples[:8]
    tokenizer = load_tokenizer(tiny_init, max_length=64)
    dataset = EncodedDataset(examples, tokenizer, 64)
    soft = teacher_probabilities([_load(t) for t in teachers], examples, 3, 1.0, 8, CPU)
    batch = Collator()([WithSoftLabels(dataset, soft)[i] for i in range(8)])
    assert batch["soft_labels"].shape == (8, 3)
    flipped = {**batch, "labels": (batch["labels"] + 1) % 3}
    losses = []
    for b in (batch, flipped):
        torch.manual_seed(0)  # the same fresh head for both
        model, _ = build_classifier(tiny_init, num_labels=3, dropout=0.0)
        sgd = torch.optim.SGD(model.parameters(), lr=0.0)
        loss, _ = finetune.train_step(model, [b], sgd, None, 0.0, CPU, 1.0, 1.0)
        losses.append(loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.manual_seed(0)
    model, _ = build_classifier(tiny_init, num_labels=3, dropout=0.0)
    plain, _ = finetune.train_step(model, [batch], torch.optim.SGD(model.parameters(), lr=0.0),
                                   None, 0.0, CPU)  # fmt: skip
    assert plain != pytest.approx(losses[0], rel=1e-3)  # the gold-label loss differs


def test_train_nli_with_teachers_records_them_and_rejects_a_label_mismatch(
    teachers: list[Path], tiny_init: Path, sample: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "student"
    args = _args(
        "nli", sample, out, "--init", str(tiny_init), "--lr", "2e-3", "--max-train-examples", "64",
        "--teacher", *map(str, teachers), "--distill-weight", "0.7",
        "--distill-temperature", "2",
    )  # fmt: skip
    assert finetune.run(args) == 0
    _, config, _ = load_classifier(out)
    assert config["train_args"]["teachers"] == [str(t) for t in teachers]
    assert config["train_args"]["distill_weight"] == 0.7

    sentiment = tmp_path / "sentiment"
    assert finetune.run(_args("classifier", sample, sentiment, "--init", str(tiny_init),
                              "--max-train-examples", "32")) == 0  # fmt: skip
    capsys.readouterr()
    bad = _args("nli", sample, tmp_path / "bad", "--init", str(tiny_init), "--teacher",
                str(sentiment))  # fmt: skip
    assert finetune.run(bad) == 2
    assert "labels" in capsys.readouterr().err
    for option, value in (("--distill-weight", "0"), ("--distill-temperature", "-1")):
        wrong = _args("nli", sample, tmp_path / "x", "--teacher", str(teachers[0]), option, value)
        assert finetune.run(wrong) == 2
        assert option in capsys.readouterr().err
