"""The model repository schema and reader (service/repository/), on small files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.repository import (
    BatchingConfig,
    ModelConfig,
    RepositoryError,
    read_model,
    scan,
    write_manifest,
    write_model_config,
)


def make_model(repository: Path, name: str, versions: tuple[int, ...] = (1,)) -> Path:
    model_dir = repository / name
    model_dir.mkdir(parents=True)
    write_model_config(
        model_dir, ModelConfig(name=name, task="text-classification", labels=["neg", "pos"])
    )
    for v in versions:
        version_dir = model_dir / str(v)
        version_dir.mkdir()
        (version_dir / "model.onnx").write_bytes(f"graph {v}".encode())
        (version_dir / "tokenizer.json").write_text("{}")
        write_manifest(version_dir, {"opset": 17, "parity": {"max_abs_diff": 1e-6}})
    return model_dir


def test_highest_version_is_served(tmp_path: Path) -> None:
    """Of integer version directories the highest wins; dot-names (staging) are ignored."""
    model_dir = make_model(tmp_path, "sentiment", versions=(1, 2, 10))
    (model_dir / ".11.partial-123").mkdir()
    (found,), problems = scan(tmp_path)
    assert (found.name, found.version, problems) == ("sentiment", 10, [])


def test_pinned_version_is_served(tmp_path: Path) -> None:
    """A pinned version is served even when a higher one exists; a missing pin is a problem."""
    make_model(tmp_path, "sentiment", versions=(1, 2))
    (found,), _ = scan(tmp_path, {"sentiment": 1})
    assert found.version == 1
    with pytest.raises(RepositoryError, match="pinned version 5 does not exist"):
        read_model(tmp_path / "sentiment", pinned_version=5)


def test_broken_model_is_reported_and_others_found(tmp_path: Path) -> None:
    """An invalid config.json makes a problem naming the field; the other models are still found."""
    make_model(tmp_path, "good")
    bad = make_model(tmp_path, "bad")
    (bad / "config.json").write_text(json.dumps({"name": "bad", "task": "summarise"}))
    found, problems = scan(tmp_path)
    assert [m.name for m in found] == ["good"]
    assert problems[0].name == "bad" and "task" in problems[0].reason


def test_checksum_mismatch_is_detected(tmp_path: Path) -> None:
    """A file changed after export fails verification with a message naming it."""
    make_model(tmp_path, "sentiment")
    (found,), _ = scan(tmp_path)
    assert found.read_verified("model.onnx") == b"graph 1"
    (found.path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(RepositoryError, match=r"model\.onnx does not match its sha256"):
        found.read_verified("model.onnx")


def test_version_lacking_a_required_file_is_a_problem(tmp_path: Path) -> None:
    """A classifier version whose manifest does not list tokenizer.json cannot be served."""
    model_dir = make_model(tmp_path, "sentiment")
    (model_dir / "1" / "tokenizer.json").unlink()
    write_manifest(model_dir / "1", {})
    _, (problem,) = scan(tmp_path)
    assert "tokenizer.json" in problem.reason


def test_config_validates_across_fields() -> None:
    """max_batch_tokens below max_length, or labels on a translator, are refused."""
    with pytest.raises(ValidationError, match="max_batch_tokens"):
        ModelConfig(
            name="m",
            task="text-classification",
            labels=["a", "b"],
            max_length=512,
            batching=BatchingConfig(max_batch_tokens=256),
        )
    with pytest.raises(ValidationError, match="labels are for classification"):
        ModelConfig(name="t", task="translation", labels=["a", "b"])
    assert ModelConfig(name="t", task="translation").generation is not None


def test_manifest_paths_must_stay_inside_the_version(tmp_path: Path) -> None:
    """A manifest naming a file outside its directory is invalid."""
    model_dir = make_model(tmp_path, "sentiment")
    manifest = json.loads((model_dir / "1" / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (model_dir / "1" / "manifest.json").write_text(json.dumps(manifest))
    _, (problem,) = scan(tmp_path)
    assert "relative path inside the version" in problem.reason
