"""`python -m model_src average`: the element-wise mean of compatible checkpoints, or a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.tiny import tiny_classifier_checkpoint, tiny_translator_checkpoint
from model_src.classifier.checkpoint import load_classifier
from model_src.cli import main
from model_src.common.checkpoint import load_state_dict


@pytest.fixture
def two_classifiers(tmp_path: Path) -> tuple[Path, Path]:
    # Same shapes, labels and tokenizer; different random weights (seeds).
    return (
        tiny_classifier_checkpoint(tmp_path / "a", seed=1),
        tiny_classifier_checkpoint(tmp_path / "b", seed=2),
    )


def test_average_is_the_elementwise_mean_and_loads_as_a_classifier(
    two_classifiers: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = two_classifiers
    out = tmp_path / "soup"
    assert main(["average", "--checkpoints", str(a), str(b), "--out", str(out)]) == 0
    sa, sb, soup = load_state_dict(a), load_state_dict(b), load_state_dict(out)
    assert set(soup) == set(sa)
    for name, tensor in soup.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (sa[name] + sb[name]) / 2)
    assert any(not torch.equal(soup[n], sa[n]) for n in soup)  # a and b really differ
    config = json.loads((out / "config.json").read_text())
    assert [s["checkpoint"] for s in config["averaged_from"]] == [str(a), str(b)]
    assert (out / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    model, loaded, _ = load_classifier(out)  # an ordinary checkpoint: loads and runs
    labels = json.loads((a / "config.json").read_text())["labels"]
    assert loaded["labels"] == labels
    ids = torch.tensor([[101, 2000, 102]])
    assert model(ids, torch.ones_like(ids)).logits.shape == (1, len(labels))


def test_average_refuses_checkpoints_that_differ_in_more_than_weights(
    two_classifiers: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = two_classifiers
    other_labels = tiny_classifier_checkpoint(tmp_path / "c", labels=["bad", "good"])
    translator = tiny_translator_checkpoint(tmp_path / "t")
    for other in (other_labels, translator):
        argv = ["average", "--checkpoints", str(a), str(other), "--out", str(tmp_path / "x")]
        assert main(argv) == 2
        assert "differ in" in capsys.readouterr().out
    assert not (tmp_path / "x" / "model.safetensors").exists()
    assert main(["average", "--checkpoints", str(a), "--out", str(tmp_path / "y")]) == 2
    assert "at least two" in capsys.readouterr().out
