"""Static (calibrated QDQ) int8 and the choice among int8 candidates, on the tiny model.

The tiny random encoder's logit margins are too small for an accuracy gate to mean anything
(tests/test_export_int8.py shows the gate on real MiniLM weights); here: what the static graph
quantises, that its logits do not depend on the batch a text is in, and how the exporter picks
among candidates (gate first, then speed).
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from export import int8_choice, samples
from export.classifier import Tolerances, export_classifier
from export.quantize import QuantSettings
from export.quantize_static import STATIC_CANDIDATES, quantize_static_int8
from export.runtime import classifier_logits, input_names, make_session
from export.text_inputs import encode, length_sorted_batches, load_tokenizer


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An optimised fp32 version of the tiny classifier (hidden 32, 2 layers)."""
    from export.tiny import tiny_classifier_checkpoint

    root = tmp_path_factory.mktemp("tiny-int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter
        return export_classifier(
            tiny_classifier_checkpoint(root / "ckpt"), root / "repo", optimize=True, threads=1
        )


def _calibration(version: Path) -> list[dict[str, np.ndarray]]:
    tokenizer = load_tokenizer(version / "tokenizer.json", 64)
    names = input_names(make_session(version / "model.onnx", 1))
    return [
        encode(tokenizer, chunk).feeds(names)
        for _, chunk in length_sorted_batches(tokenizer, list(samples.SENTENCES), 8)
    ]


def _static(tiny_fp32: Path, tmp_path: Path, name: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    settings = next(s for s in STATIC_CANDIDATES if s.name == name)
    dst = tmp_path / f"{name}.onnx"
    counts = quantize_static_int8(
        tiny_fp32 / "model.onnx", dst, settings, _calibration(tiny_fp32), tmp_path
    )
    return onnx.load(str(dst)), counts


def test_static_int8_quantizes_every_matmul_with_per_channel_weights(
    tiny_fp32: Path, tmp_path: Path
) -> None:
    """Attention output and both feed-forward MatMuls of each layer run on int8 inputs; weight
    scales are per output column; activations have one fixed scale (a constant, not computed
    per batch) and MatMul outputs stay fp32."""
    model, counts = _static(tiny_fp32, tmp_path, "static-minmax")
    assert counts["QDQMatMul"] == 3 * 2  # out, ffn up, ffn down x 2 layers
    init = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    for matmul in matmuls:
        activation, weight = dq[matmul.input[0]], dq[matmul.input[1]]
        weight_scale = onnx.numpy_helper.to_array(init[weight.input[1]])
        columns = onnx.numpy_helper.to_array(init[weight.input[0]]).shape[1]
        assert weight_scale.shape == (columns,)  # per channel
        assert onnx.numpy_helper.to_array(init[activation.input[1]]).shape == ()  # static scale
        assert all(matmul.output[0] not in n.input for n in model.graph.node
                   if n.op_type == "QuantizeLinear")  # fmt: skip


def test_static_ffn_down_candidate_keeps_feed_forward_outputs_fp32(
    tiny_fp32: Path, tmp_path: Path
) -> None:
    model, counts = _static(tiny_fp32, tmp_path, "static-minmax-ffn-down-fp32")
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    fp32 = [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in dq for i in n.input)]  # fmt: skip
    assert len(fp32) == 2 and all("ffn/down" in name for name in fp32)
    assert counts["QDQMatMul"] == 4


def test_static_int8_logits_do_not_depend_on_the_batch(tiny_fp32: Path, tmp_path: Path) -> None:
    """A text's int8 logits are the same alone and in mixed-length batches of varied sizes (float
    rounding aside): the activation scales are fixed, not taken from the batch."""
    _static(tiny_fp32, tmp_path, "static-minmax")
    session = make_session(tmp_path / "static-minmax.onnx", 1)
    tokenizer = load_tokenizer(tiny_fp32 / "tokenizer.json", 64)
    diff = int8_choice.batch_composition_diff(
        lambda batch: classifier_logits(session, batch), tokenizer, list(samples.SENTENCES)[:24]
    )
    assert diff < 1e-4


def test_choice_keeps_the_fastest_candidate_inside_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every candidate is built, scored and timed; among those the gate accepts, the fastest is
    moved to dst (the fastest overall failed the gate); candidates quantising nothing are
    skipped; every candidate file but the chosen one is removed."""
    candidates = [int8_choice.Int8Candidate("dynamic", QuantSettings(n)) for n in "abcd"]
    agreement = {"a": 0.95, "b": 0.995, "c": 1.0, "d": 1.0}  # a: fastest, but fails
    speed = {"a": 300.0, "b": 250.0, "c": 180.0, "src": 100.0}

    def fake_build(candidate: Any, src: Path, dst: Path, *_: Any) -> dict[str, int]:
        if candidate.name == "d":
            return {}  # nothing to quantise in this graph
        dst.write_text(candidate.name)
        return {"MatMulInteger": 1}

    monkeypatch.setattr(int8_choice, "build", fake_build)
    src = tmp_path / "src.onnx"
    src.write_text("src")
    chosen, attempts, fp32 = int8_choice.choose_int8(
        src,
        tmp_path / "int8.onnx",
        tmp_path,
        candidates,
        [],
        lambda path: {"label_agreement": agreement[path.read_text()]},
        lambda metrics: metrics["label_agreement"] >= 0.99,
        lambda paths: [speed[p.read_text()] for p in paths],
    )
    assert chosen is not None and chosen.candidate.name == "b"
    assert (tmp_path / "int8.onnx").read_text() == "b" and fp32 == 100.0
    assert [(a.candidate.name, a.passed, a.seq_per_s) for a in attempts] == [
        ("a", False, 300.0), ("b", True, 250.0), ("c", True, 180.0)
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "src.onnx"]
    agreement["b"] = agreement["c"] = 0.5
    (tmp_path / "int8.onnx").unlink()
    none, attempts, fp32 = int8_choice.choose_int8(
        src, tmp_path / "int8.onnx", tmp_path, candidates, [],
        lambda path: {"label_agreement": agreement[path.read_text()]},
        lambda metrics: metrics["label_agreement"] >= 0.99,
        lambda paths: [speed[p.read_text()] for p in paths],
    )  # fmt: skip
    assert none is None and fp32 == 100.0 and [a.seq_per_s for a in attempts] == [300, 250, 180]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]


def test_unknown_candidate_names_are_refused() -> None:
    assert [c.name for c in int8_choice.select_candidates(["static-minmax", "per-channel"])] == [
        "static-minmax", "per-channel"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown int8 candidates \\['nope'\\]"):
        int8_choice.select_candidates(["nope"])


def test_int8_export_records_calibration_speed_and_batch_invariance(tmp_path: Path) -> None:
    """The exporter's int8 path end to end (label gate opened: the tiny model's labels are
    noise): calibration texts from the training file the checkpoint recorded, every attempt with
    its speed and batch-composition check, the dynamic one refused for changing with the batch
    although faster, and the chosen one's speedup over fp32."""
    from export.tiny import tiny_classifier_checkpoint

    ckpt = tiny_classifier_checkpoint(tmp_path / "ckpt")
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in samples.SENTENCES))
    config = json.loads((ckpt / "config.json").read_text())
    config["train_args"] = {"train": [str(train)]}
    (ckpt / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        version = export_classifier(
            ckpt, tmp_path / "repo", optimize=True, quantize="int8", threads=1,
            int8_candidates=("static-minmax", "per-channel"), calibration_limit=20,
            tolerances=Tolerances(int8_min_agreement=0.0, int8_max_drop_points=100.0),
        )  # fmt: skip
    manifest = json.loads((version / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["calibration"] == {"source": str(train), "texts": 20}
    assert [a["settings"]["name"] for a in q["attempts"]] == ["static-minmax", "per-channel"]
    attempts = {a["settings"]["name"]: a for a in q["attempts"]}
    batch_diff = {n: a["metrics"]["batch_composition_max_abs_diff"] for n, a in attempts.items()}
    assert batch_diff["static-minmax"] < 1e-4 < batch_diff["per-channel"]
    assert [n for n, a in attempts.items() if a["passed"]] == ["static-minmax"]
    assert q["chosen"] == "static-minmax"
    rate = attempts["static-minmax"]["seq_per_s"]
    assert q["speed"]["speedup"] == pytest.approx(rate / q["speed"]["fp32_seq_per_s"])
    assert manifest["parity"]["int8"]["batch_composition_max_abs_diff"] < 1e-4
    assert manifest["precision"] == "int8"


def test_sensitive_candidate_keeps_the_noisiest_matmuls_fp32(
    tiny_fp32: Path, tmp_path: Path
) -> None:
    """`fp32_most_sensitive=N` measures each MatMul's int8 input noise on the fully quantised
    graph and keeps the N worst fp32; the others stay integer."""
    from export.quantize_static import input_sqnr

    _static(tiny_fp32, tmp_path, "static-minmax")
    sqnr = input_sqnr(tmp_path / "static-minmax.onnx", _calibration(tiny_fp32))
    assert len(sqnr) == 6 and all(np.isfinite(v) for v in sqnr.values())
    worst = sorted(sqnr, key=lambda name: sqnr[name])[:3]
    model, counts = _static(tiny_fp32, tmp_path, "static-minmax-3-most-sensitive-fp32")
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    fp32 = {n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in dq for i in n.input)}  # fmt: skip
    assert fp32 == set(worst) and counts["QDQMatMul"] == 3


def test_restoring_every_matmul_gives_back_the_fp32_logits(tiny_fp32: Path, tmp_path: Path) -> None:
    """The harm ranking's graph surgery: a QDQ graph with every MatMul restored (float activation,
    fp32 weight) computes what the fp32 graph computes, with no Q/DQ node left."""
    from export.int8_sensitivity import _matmul_weights, _quantised_matmuls, _restore

    model, _ = _static(tiny_fp32, tmp_path, "static-minmax")
    fp32 = onnx.load(str(tiny_fp32 / "model.onnx"))
    restored = _restore(model, _matmul_weights(fp32), _quantised_matmuls(model))
    assert not [n for n in restored.graph.node if "QuantizeLinear" in n.op_type]
    onnx.save(restored, str(tmp_path / "restored.onnx"))
    tokenizer = load_tokenizer(tiny_fp32 / "tokenizer.json", 64)
    batch = encode(tokenizer, list(samples.SENTENCES[:8]))
    got = classifier_logits(make_session(tmp_path / "restored.onnx", 1), batch)
    want = classifier_logits(make_session(tiny_fp32 / "model.onnx", 1), batch)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_harmful_candidates_keep_a_prefix_of_the_greedy_ranking_fp32(
    tiny_fp32: Path, tmp_path: Path
) -> None:
    """`fp32_most_harmful=N` keeps fp32 the first N MatMuls of the greedy ranking (each step
    lowers the output's divergence from fp32 on the calibration texts), computed once per export
    and shared by the candidates; the rest stay integer."""
    _static(tiny_fp32, tmp_path, "static-minmax-1-most-harmful-fp32")
    ranking = json.loads((tmp_path / "int8-harm-ranking-minmax-float-residuals.json").read_text())
    assert len(ranking) == 4 and len(set(ranking)) == 4
    model, counts = _static(tiny_fp32, tmp_path, "static-minmax-2-most-harmful-fp32")
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    fp32 = {n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in dq for i in n.input)}  # fmt: skip
    assert fp32 == set(ranking[:2]) and counts["QDQMatMul"] == 4


def test_greedy_harm_ranking_lowers_the_divergence_at_every_step(
    tiny_fp32: Path, tmp_path: Path
) -> None:
    from export.int8_sensitivity import greedy_harm_ranking

    _static(tiny_fp32, tmp_path, "static-minmax")
    ranking = greedy_harm_ranking(
        tiny_fp32 / "model.onnx", tmp_path / "static-minmax.onnx", _calibration(tiny_fp32), 6
    )  # fmt: skip
    kl = [score for _, score in ranking]
    assert len(ranking) == 6 and all(a >= b for a, b in itertools.pairwise(kl))
    assert kl[-1] == pytest.approx(0.0, abs=1e-9)  # everything restored: the fp32 graph


def test_only_matmuls_read_rounded_activations(tiny_fp32: Path, tmp_path: Path) -> None:
    """The QDQ quantiser hands a MatMul's rounded input to every reader of the tensor (the
    residual SkipLayerNormalization too); the exporter rewires the other readers to the float
    tensor, unless the setting asks to keep the quantiser's graph."""
    from dataclasses import replace

    def non_matmul_readers(model: onnx.ModelProto) -> list[str]:
        producer = {o: n for n in model.graph.node for o in n.output}
        rounded = {
            n.output[0]
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in producer
        }
        return [
            n.op_type
            for n in model.graph.node
            if n.op_type != "MatMul" and any(i in rounded for i in n.input)
        ]

    model, _ = _static(tiny_fp32, tmp_path, "static-minmax")
    assert non_matmul_readers(model) == []
    settings = replace(STATIC_CANDIDATES[0], float_residuals=False)
    quantize_static_int8(
        tiny_fp32 / "model.onnx", tmp_path / "q.onnx", settings, _calibration(tiny_fp32), tmp_path
    )
    assert "SkipLayerNormalization" in non_matmul_readers(onnx.load(str(tmp_path / "q.onnx")))


def test_calibration_reads_a_gzipped_training_file(tmp_path: Path) -> None:
    """The default calibration source is the checkpoint's training file, which may be gzipped
    (SNLI's train.tsv.gz): pairs are read from it like from a plain TSV."""
    import gzip

    from export.text_inputs import read_dev_file

    rows = "premise\thypothesis\tlabel\nA dog runs.\tAn animal moves.\tentailment\n"
    plain, packed = tmp_path / "train.tsv", tmp_path / "train.tsv.gz"
    plain.write_text(rows)
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(rows)
    labels = ["entailment", "neutral", "contradiction"]
    read = [read_dev_file(p, labels, pair=True, limit=None) for p in (plain, packed)]
    assert read[0] == read[1] and read[1].texts == [("A dog runs.", "An animal moves.")]
