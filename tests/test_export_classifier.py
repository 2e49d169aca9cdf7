"""Classifier/NLI export on tiny random models: graph contract, parity, fusions, repository.

Tiny encoders (hidden 32, 2 layers) with the real MiniLM tokenizer keep each export to about a
second; the int8 path on the real MiniLM lives in test_export_int8.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from export import samples
from export.__main__ import main
from export.classifier import export_classifier
from export.classifier_graph import load_classifier, torch_logits
from export.optimize import EXPECTED_BERT_FUSIONS
from export.publish import verify_manifest
from export.runtime import classifier_logits, make_session
from export.text_inputs import encode, load_tokenizer
from export.tiny import tiny_classifier_checkpoint
from service import repository


@pytest.fixture(autouse=True)
def _no_environment_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main()` sets OMP_WAIT_POLICY for its process; keep that out of the test session."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def sentiment_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier_checkpoint(tmp_path_factory.mktemp("ckpt") / "sentiment")


@pytest.fixture(scope="module")
def nli_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "nli", task="text-pair-classification", seed=1
    )


@pytest.fixture(scope="module")
def fp32_version(sentiment_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_classifier(sentiment_ckpt, tmp_path_factory.mktemp("repo"))


def _max_diff_vs_pytorch(ckpt: Path, model_path: Path, texts: list, batch_size: int) -> float:
    model, config, _ = load_classifier(ckpt)
    tokenizer = load_tokenizer(ckpt / "tokenizer.json", config["max_length"])
    session = make_session(model_path, threads=1)
    worst = 0.0
    for i in range(0, len(texts), batch_size):
        batch = encode(tokenizer, texts[i : i + batch_size])
        diff = np.abs(classifier_logits(session, batch) - torch_logits(model, batch)).max()
        worst = max(worst, float(diff))
    return worst


def test_graph_declares_dynamic_int64_inputs_and_logits(fp32_version: Path) -> None:
    """The ONNX graph passes the checker and exposes the contract's I/O with dynamic axes."""
    model = onnx.load(str(fp32_version / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch", "sequence"]
    (output,) = model.graph.output
    assert output.name == "logits"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.opset_import[0].version == 17


@pytest.mark.parametrize("batch_size", [1, 7, 33])
def test_fp32_logits_match_pytorch_across_lengths(
    sentiment_ckpt: Path, fp32_version: Path, batch_size: int
) -> None:
    """fp32 ONNX logits are within 1e-4 of PyTorch for 2..128-token texts at several batch sizes."""
    long_text = " ".join(samples.SENTENCES)  # truncated to max_length (128) tokens
    texts = [long_text, *samples.SENTENCES]
    if batch_size == 1:  # one call per text: a spread of lengths is enough
        texts = [long_text, *samples.SENTENCES[::4]]
    diff = _max_diff_vs_pytorch(sentiment_ckpt, fp32_version / "model.onnx", texts, batch_size)
    assert diff <= 1e-4


def test_nli_export_encodes_pairs_with_segment_ids(nli_ckpt: Path, tmp_path: Path) -> None:
    """The NLI export is a pair model: parity holds on (premise, hypothesis) pairs."""
    version = export_classifier(nli_ckpt, tmp_path / "repo", kind="nli")
    assert version == tmp_path / "repo" / "nli" / "1"
    config = repository.read_model_config(version.parent)
    assert config.task == "text-pair-classification"
    assert config.labels == ["entailment", "neutral", "contradiction"]
    pairs = list(samples.PAIRS)
    assert _max_diff_vs_pytorch(nli_ckpt, version / "model.onnx", pairs, 5) <= 1e-4
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["parity"]["fp32_vs_pytorch"]["max_abs_diff"] <= 1e-4


def test_optimized_graph_has_bert_fusions(sentiment_ckpt: Path, tmp_path: Path) -> None:
    """--optimize fuses embeddings, attention, skip-LayerNorm and bias-GELU (manifest says so)."""
    version = export_classifier(sentiment_ckpt, tmp_path, optimize=True)
    ops = {node.op_type for node in onnx.load(str(version / "model.onnx")).graph.node}
    assert set(EXPECTED_BERT_FUSIONS) <= ops
    manifest = json.loads((version / "manifest.json").read_text())
    fusions = manifest["optimizations"]["fusions"]
    assert fusions["Attention"] == 2  # one per layer
    assert set(EXPECTED_BERT_FUSIONS) <= set(fusions)
    assert manifest["parity"]["optimized_vs_pytorch"]["max_abs_diff"] <= 1e-4


def test_manifest_checksums_match_and_service_reads_the_version(
    sentiment_ckpt: Path, fp32_version: Path
) -> None:
    """Every file is in the manifest with its sha256; the service's reader accepts the model."""
    model_dir = fp32_version.parent
    found = repository.read_model(model_dir)
    assert found.version == 1
    assert set(found.manifest.files) == {"model.onnx", "tokenizer.json", "README.md"}
    assert verify_manifest(found.path) == []  # every checksum matches
    assert found.manifest.precision == "fp32"
    assert found.manifest.opset == 17
    assert found.manifest.source_checkpoint == str(sentiment_ckpt.resolve())
    assert found.config.labels == ["negative", "positive"]
    assert found.config.max_length == 128


def test_failed_parity_exits_nonzero_and_writes_nothing(
    sentiment_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parity failure exits 1 with the measured numbers and leaves the repository untouched."""
    repo = tmp_path / "repo"
    argv = ["classifier", "--checkpoint", str(sentiment_ckpt), "--repository", str(repo)]
    assert main([*argv, "--atol", "1e-12"]) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err
    assert "max_abs_diff" in err
    assert not repo.exists() or not any(repo.rglob("*"))


def test_versions_increment_and_an_existing_version_is_refused(
    sentiment_ckpt: Path, tmp_path: Path
) -> None:
    """Without --version the next integer is used; naming an existing one exits 2."""
    argv = ["classifier", "--checkpoint", str(sentiment_ckpt), "--repository", str(tmp_path)]
    assert main(argv) == 0
    assert main(argv) == 0
    assert repository.list_versions(tmp_path / "sentiment") == [1, 2]
    assert main([*argv, "--version", "2"]) == 2


def test_wrong_task_is_refused(sentiment_ckpt: Path, tmp_path: Path) -> None:
    """Exporting a single-text checkpoint as NLI fails fast with exit code 2."""
    argv = ["nli", "--checkpoint", str(sentiment_ckpt), "--repository", str(tmp_path)]
    assert main(argv) == 2
    assert not any(tmp_path.iterdir())


def test_fp16_export_keeps_float32_io(sentiment_ckpt: Path, tmp_path: Path) -> None:
    """--fp16 stores float16 weights behind float32 inputs/outputs and records its parity."""
    version = export_classifier(sentiment_ckpt, tmp_path, optimize=True, fp16=True)
    model = onnx.load(str(version / "model.onnx"))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert weights
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    assert manifest["parity"]["fp16_vs_fp32"]["label_agreement"] >= 0.99
