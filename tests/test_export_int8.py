"""int8 export on the real MiniLM-L6 encoder (the slower export test: ~15 s of CPU).

A tiny random encoder is no stand-in here: its logit margins are so small that any rounding flips
labels, so the accuracy-driven choice of quantisation settings can only be shown on real weights.
The head is a linear probe fitted on the bundled labelled sentences (see export.tiny).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from export import samples
from export.classifier import export_classifier
from export.optimize import EXPECTED_BERT_FUSIONS
from export.runtime import classifier_logits, make_session
from export.text_inputs import encode, load_tokenizer
from export.tiny import minilm_probe_checkpoint


@pytest.fixture(scope="module")
def int8_version(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("minilm")
    ckpt = minilm_probe_checkpoint(root / "ckpt")
    dev = root / "dev.tsv"
    rows = zip(samples.SENTENCE_LABELS, samples.SENTENCES, strict=True)
    dev.write_text("label\tsentence\n" + "".join(f"{y}\t{x}\n" for y, x in rows))
    # A static and a dynamic candidate (every candidate is built, scored and timed: all of them
    # would take minutes here; tests/test_export_int8_static.py covers the choice itself).
    candidates = ("static-minmax", "attention-only")
    version = export_classifier(
        ckpt, root / "repo", optimize=True, quantize="int8", dev=dev, int8_candidates=candidates
    )
    return ckpt, version


def test_int8_export_keeps_labels_and_dev_accuracy(int8_version: tuple[Path, Path]) -> None:
    """The chosen int8 settings agree with fp32 on >= 99% of the dev set and lose <= 0.3 points;
    of the candidates inside that gate, the fastest measured was chosen (every one is timed)."""
    _, version = int8_version
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    int8 = manifest["parity"]["int8"]
    assert int8["label_agreement"] >= 0.99
    assert int8["accuracy_drop_points"] <= 0.3
    quantization = manifest["quantization"]
    passed = {
        a["settings"]["name"]: a["seq_per_s"] for a in quantization["attempts"] if a["passed"]
    }
    assert quantization["chosen"] == max(passed, key=lambda name: passed[name])
    assert all(a["seq_per_s"] > 0 for a in quantization["attempts"])  # every one timed


def test_int8_graph_uses_integer_kernels_on_fused_minilm(int8_version: tuple[Path, Path]) -> None:
    """Real MiniLM gets every BERT fusion, and the int8 graph runs integer attention/matmuls
    (dynamic) or carries the QDQ pairs ONNX Runtime turns into integer MatMuls (static)."""
    _, version = int8_version
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["optimizations"]["fusions"]["Attention"] == 6  # one per layer
    assert set(EXPECTED_BERT_FUSIONS) <= set(manifest["optimizations"]["fusions"])
    ops = {n.op_type for n in onnx.load(str(version / "model.onnx")).graph.node}
    if manifest["quantization"]["settings"]["name"].startswith("static"):
        # QDQ: ONNX Runtime fuses QuantizeLinear -> DequantizeLinear -> MatMul into integer
        # MatMul kernels when it loads the graph.
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    else:
        assert ops & {"QAttention", "MatMulInteger", "DynamicQuantizeMatMul"}


def test_int8_predictions_agree_with_fp32_pytorch(int8_version: tuple[Path, Path]) -> None:
    """Served int8 predictions equal the PyTorch model's on the bundled sentences."""
    from export.classifier_graph import load_classifier, torch_logits

    ckpt, version = int8_version
    model, config, _ = load_classifier(ckpt)
    tokenizer = load_tokenizer(ckpt / "tokenizer.json", config["max_length"])
    batch = encode(tokenizer, list(samples.SENTENCES))
    int8 = classifier_logits(make_session(version / "model.onnx"), batch)
    fp32 = torch_logits(model, batch)
    agreement = float((int8.argmax(-1) == fp32.argmax(-1)).mean())
    assert agreement >= 0.99


def test_ffn_down_candidate_keeps_only_the_feed_forward_outputs_fp32(
    int8_version: tuple[Path, Path], tmp_path: Path
) -> None:
    """The `per-channel-ffn-down-fp32` candidate quantises every MatMul except the six
    feed-forward output projections (matched by node name: a renamed module would silently
    quantise them, so the names are pinned here)."""
    from export.quantize import CANDIDATES, quantize_int8

    ckpt, _ = int8_version
    fp32 = export_classifier(ckpt, tmp_path / "repo", optimize=True)
    settings = next(c for c in CANDIDATES if c.name == "per-channel-ffn-down-fp32")
    counts = quantize_int8(fp32 / "model.onnx", tmp_path / "q.onnx", settings)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    fp32_matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    assert len(fp32_matmuls) == 6 and all("ffn/down" in name for name in fp32_matmuls)
    assert counts["QAttention"] == 6 and counts["MatMulInteger"] >= 12  # attention out + ffn up


def test_last_layer_candidate_keeps_that_layers_matmuls_fp32(
    int8_version: tuple[Path, Path], tmp_path: Path
) -> None:
    """`fp32_last_layers=1` finds the depth from the node names and keeps layer 5's MatMuls
    (and every ffn/down) fp32."""
    from export.quantize import CANDIDATES, quantize_int8

    ckpt, _ = int8_version
    fp32 = export_classifier(ckpt, tmp_path / "repo", optimize=True)
    settings = next(c for c in CANDIDATES if c.fp32_last_layers == 1)
    quantize_int8(fp32 / "model.onnx", tmp_path / "q.onnx", settings)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    fp32_matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert {n for n in fp32_matmuls if "layers.5/" in n} == {
        "/classifier/encoder/encoder/layers.5/attention/out/MatMul",
        "/classifier/encoder/encoder/layers.5/ffn/up/MatMul",
        "/classifier/encoder/encoder/layers.5/ffn/down/MatMul",
    }
    assert len(fp32_matmuls) == 8  # six ffn/down + layer 5's attention out and ffn up
