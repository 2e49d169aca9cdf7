"""A shallower student: `model_src shrink` from alternate layers, distilled from its teacher with
`train --init STUDENT --teacher TEACHER`, exported as another version of the same model."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from model_src.classifier import shrink
from model_src.classifier import train as finetune
from model_src.classifier.checkpoint import load_classifier
from model_src.cli import main as cli_main


def _train(sample: Path, out: Path, *extra: str) -> None:
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    args = parser.parse_args(
        ["--train", str(sample / "sentiment/train.tsv"), "--dev", str(sample / "sentiment/dev.tsv"),
         "--out", str(out), "--epochs", "1", "--batch-size", "16", "--threads", "1",
         "--eval-every", "0", "--max-train-examples", "64", "--lr", "2e-3", *extra]
    )  # fmt: skip
    args.task = "classifier"
    assert finetune.run(args) == 0


def test_alternate_layers_are_evenly_spaced_and_keep_the_last() -> None:
    assert shrink.alternate_layers(6, 3) == [1, 3, 5]
    assert shrink.alternate_layers(6, 4) == [1, 2, 4, 5]
    assert shrink.alternate_layers(6, 6) == list(range(6))
    assert shrink.alternate_layers(2, 1) == [1]
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        shrink.alternate_layers(6, 7)


def test_student_from_alternate_layers_distils_and_exports_as_another_version(
    tiny_init: Path, sample: Path, tmp_path: Path
) -> None:
    """The 1-layer student of a 2-layer teacher starts with the teacher's embeddings, head and
    layer 1; `train --init student --teacher teacher` continues it at that depth; the export
    is version 2 of the same model, next to the teacher's version 1, with one layer's nodes."""
    teacher, init, student = tmp_path / "teacher", tmp_path / "init", tmp_path / "student"
    _train(sample, teacher, "--init", str(tiny_init))
    assert (
        cli_main(["shrink", "--checkpoint", str(teacher), "--layers", "1", "--out", str(init)]) == 0
    )
    config = json.loads((init / "config.json").read_text())
    assert config["encoder"]["num_hidden_layers"] == 1
    assert config["shrunk_from"]["layers"] == [1] and "best" not in config
    big, _, _ = load_classifier(teacher)
    small, _, _ = load_classifier(init)
    for (name, a), (_, b) in zip(
        big.encoder.encoder.layers[1].state_dict().items(),
        small.encoder.encoder.layers[0].state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert torch.equal(big.classifier.weight, small.classifier.weight)
    assert torch.equal(
        big.encoder.embeddings.word.weight,
        small.encoder.embeddings.word.weight,
    )

    _train(sample, student, "--init", str(init), "--teacher", str(teacher))
    trained = json.loads((student / "config.json").read_text())
    assert trained["encoder"]["num_hidden_layers"] == 1
    assert trained["train_args"]["teachers"] == [str(teacher)]

    from export.classifier import export_classifier

    repo = tmp_path / "repo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter
        export_classifier(teacher, repo, optimize=True, threads=1)
        v2 = export_classifier(student, repo, optimize=True, threads=1)
    assert v2 == repo / "sentiment" / "2"
    names = [n.name for n in onnx.load(str(v2 / "model.onnx")).graph.node]
    assert any("layers.0/" in n for n in names) and not any("layers.1/" in n for n in names)


def test_shrink_refuses_bad_layer_choices(tiny_init: Path, tmp_path: Path) -> None:
    """Indices out of range or repeated, and a directory that is no fine-tuned classifier."""
    assert cli_main(["shrink", "--checkpoint", str(tiny_init), "--layers", "1",
                     "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    with pytest.raises(ValueError, match="not a fine-tuned classifier"):
        shrink.shrink_checkpoint(tiny_init, tmp_path / "y", 1)
