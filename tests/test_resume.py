"""Resume: a run stopped part-way (--max-steps) and continued with --resume ends with exactly the
weights, optimiser state and RNG draws of the same run done in one go."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_src.cli import main
from model_src.common.resume import RESUME_FILE, load_resume_state

# Dropout stays on (0.1): the resumed run must also restore the random generators.
CLASSIFIER = [
    "--epochs", "2", "--batch-size", "16", "--max-train-examples", "48", "--eval-every", "0",
    "--lr", "1e-3", "--threads", "1", "--device", "cpu",
]  # fmt: skip
TRANSLATOR = [
    "--d-model", "32", "--heads", "4", "--ffn", "64", "--layers", "1", "--vocab-size", "200",
    "--max-tokens", "64", "--epochs", "2", "--dropout", "0.1", "--warmup", "5", "--no-progress",
    "--max-dev-examples", "8", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_final_state(whole: Path, resumed: Path) -> None:
    a, b = load_resume_state(whole), load_resume_state(resumed)
    assert a is not None and b is not None
    assert a.position == b.position and a.position.finished
    assert a.model.keys() == b.model.keys()
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    for key, state in a.optimizer["state"].items():
        assert torch.equal(state["exp_avg_sq"], b.optimizer["state"][key]["exp_avg_sq"])
    assert torch.equal(a.rng["torch"], b.rng["torch"])


def test_classifier_resumed_mid_epoch_ends_with_the_uninterrupted_weights(
    tiny_init: Path, sample: Path, tmp_path: Path
) -> None:
    """Also: --resume on an --out without a resume state trains from the start (what
    `make models` relies on), and resuming a finished run does nothing."""
    common = [
        "train", "classifier", "--train", str(sample / "sentiment/train.tsv"),
        "--dev", str(sample / "sentiment/dev.tsv"), "--init", str(tiny_init), *CLASSIFIER,
    ]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main([*common, "--out", str(whole), "--resume"]) == 0  # nothing to resume: a fresh run
    # 48 examples / 16 = 3 steps an epoch: stop at step 2, mid-way through the first epoch.
    assert main([*common, "--out", str(resumed), "--max-steps", "2"]) == 0
    stopped = load_resume_state(resumed)
    assert stopped is not None and stopped.position.step == 2 and not stopped.position.finished
    assert main([*common, "--out", str(resumed), "--resume"]) == 0
    assert_same_final_state(whole, resumed)
    assert (whole / "model.safetensors").read_bytes() == (
        resumed / "model.safetensors"
    ).read_bytes()
    finished = (resumed / RESUME_FILE).stat().st_mtime_ns
    assert main([*common, "--out", str(resumed), "--resume"]) == 0
    assert (resumed / RESUME_FILE).stat().st_mtime_ns == finished  # not trained again


def test_translator_resumed_mid_epoch_ends_with_the_uninterrupted_weights(
    sample: Path, tmp_path: Path
) -> None:
    data = sample / "translation"
    common = [
        "train", "translator", "--train-src", str(data / "train.en"),
        "--train-tgt", str(data / "train.de"), "--dev-src", str(data / "dev.en"),
        "--dev-tgt", str(data / "dev.de"), "--max-train-examples", "48", *TRANSLATOR,
    ]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main([*common, "--out", str(whole)]) == 0
    assert main([*common, "--out", str(resumed), "--max-steps", "3"]) == 0
    stopped = load_resume_state(resumed)
    assert stopped is not None and stopped.position.step == 3 and stopped.position.epoch == 0
    assert main([*common, "--out", str(resumed), "--resume"]) == 0
    assert_same_final_state(whole, resumed)
