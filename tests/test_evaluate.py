"""`evaluate`: accuracy, macro-F1 and the confusion matrix, checked against hand computations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from model_src.bert.heads import SequenceClassifier
from model_src.bert.hf_checkpoint import default_checkpoint_dir
from model_src.bert.model import BertConfig, BertModel
from model_src.bert.tokenization import load_tokenizer
from model_src.classifier import evaluate
from model_src.classifier.checkpoint import save_classifier


def test_metrics_match_a_hand_computation() -> None:
    """Nine 3-class predictions: the matrix, accuracy 5/9, per-label precision/recall/F1 and
    macro-F1 (2/3 + 2/5 + 4/7) / 3 equal the values worked out by hand."""
    gold = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 1, 1, 2, 2, 2, 0, 1]
    matrix = evaluate.confusion_matrix(gold, pred, 3)
    assert matrix == [[2, 1, 0], [0, 1, 1], [1, 1, 2]]
    result = evaluate.metrics_from_confusion(matrix, ["e", "n", "c"])
    assert result["examples"] == 9
    assert result["accuracy"] == pytest.approx(5 / 9)
    assert result["per_label"]["n"]["precision"] == pytest.approx(1 / 3)
    assert result["per_label"]["n"]["recall"] == pytest.approx(1 / 2)
    assert result["per_label"]["c"]["f1"] == pytest.approx(4 / 7)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 5 + 4 / 7) / 3)


def test_a_label_never_predicted_scores_zero_f1() -> None:
    """A label with no predictions has precision 0 and F1 0 (no division by zero)."""
    result = evaluate.metrics_from_confusion([[0, 2], [0, 3]], ["negative", "positive"])
    assert result["per_label"]["negative"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2,
    }  # fmt: skip
    assert result["macro_f1"] == pytest.approx((0 + 0.75) / 2)


@pytest.fixture(scope="module")
def always_positive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier checkpoint whose head ignores the text and always says "positive"."""
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model = SequenceClassifier(BertModel(config), num_labels=2)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0]))
    out = tmp_path_factory.mktemp("always_positive")
    tokenizer = load_tokenizer(default_checkpoint_dir())
    save_classifier(out, model, tokenizer, "classifier", ["negative", "positive"], 64)
    return out


def evaluate_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_prints_and_writes_metrics_and_confusion_matrix(
    always_positive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On 3 positive + 2 negative rows an always-positive model scores accuracy 0.6 and macro-F1
    0.375 (F1 0 and 0.75); the matrix is printed with label names and written as JSON."""
    data = tmp_path / "dev.tsv"
    data.write_text(
        "label\tsentence\n1\tgood\n0\tbad\n1\tgreat film\n0\tdull\n1\tlovely\n", encoding="utf-8"
    )
    out = tmp_path / "metrics.json"
    args = evaluate_args(
        "--checkpoint", str(always_positive), "--data", str(data), "--out", str(out)
    )
    assert evaluate.run(args) == 0
    printed = capsys.readouterr().out
    assert "accuracy  0.6000" in printed and "macro-F1  0.3750" in printed
    lines = printed.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("gold \\ predicted")))
    assert lines[header].split()[-2:] == ["negative", "positive"]
    assert lines[header + 1].split() == ["negative", "0", "2"]
    assert lines[header + 2].split() == ["positive", "0", "3"]
    written = json.loads(out.read_text())
    assert written["confusion_matrix"] == [[0, 2], [0, 3]]
    assert written["accuracy"] == pytest.approx(0.6) and written["macro_f1"] == pytest.approx(0.375)


def test_cli_bad_data_is_one_error_line_and_exit_2(
    always_positive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose labels are not the checkpoint's ends with one error line and exit code 2."""
    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\nspam\tbuy now\nham\thello\n", encoding="utf-8")
    assert (
        evaluate.run(evaluate_args("--checkpoint", str(always_positive), "--data", str(data))) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'spam'" in err[0]
