"""Static (calibrated) int8 quantisation in QDQ form: fixed activation scales, per-channel weights.

Dynamic quantisation (export.quantize) measures each batch's activation range at run time, so a
text's logits depend on the other texts it was batched with, and one outlier token stretches the
scale for the whole batch. Static quantisation fixes every activation scale once, from
calibration texts taken from the training data: a text gets the same int8 inputs whatever its
batch, and ONNX Runtime runs the QDQ MatMuls as integer kernels (u8 activations x s8 weights; the
VNNI instructions on AVX-512 CPUs).

What is quantised: the MatMuls left after the transformer optimiser's fusions, i.e. per layer the
attention output projection and both feed-forward projections (about three quarters of the
encoder's weights); the fused Attention op (QKV projection and scores) stays fp32, since QDQ
has no integer Attention. By default a MatMul's output stays fp32 (the next op, a fused
SkipLayerNormalization, reads fp32 anyway): one rounding per MatMul instead of two, and the
other readers of a quantised activation (the residual adds) read the float tensor
(read_float_outside_matmuls), so no rounding enters the residual stream.
The candidates below differ in how the activation ranges are calibrated and in which MatMuls
stay fp32; the exporter measures each (export.int8_choice).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from export.int8_sensitivity import float_source, greedy_harm_ranking
from export.quantize import last_layer_patterns

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class StaticSettings:
    name: str
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True  # one weight scale per output column
    quantize_outputs: bool = False  # also quantise MatMul outputs (QLinearMatMul): more error
    exclude_patterns: tuple[str, ...] = ()  # node-name substrings kept fp32
    fp32_last_layers: int = 0  # MatMuls of the encoder's last N layers stay fp32
    # The N MatMuls whose int8 input loses most (lowest signal-to-quantisation-noise ratio on
    # the calibration texts, measured on the fully quantised graph) stay fp32.
    fp32_most_sensitive: int = 0
    # The N MatMuls whose restoring to fp32 most lowers the output's divergence from the fp32
    # graph on the calibration texts (export.int8_sensitivity, greedy) stay fp32.
    fp32_most_harmful: int = 0
    # Non-MatMul readers of a quantised activation (the residual adds) read the float tensor.
    float_residuals: bool = True
    notes: str = ""


# Greedy steps of the harm ranking, computed once per calibration method and shared by the
# candidates below (each keeps a prefix of it).
HARM_RANKING_STEPS = 4


STATIC_CANDIDATES: tuple[StaticSettings, ...] = (
    StaticSettings("static-minmax", notes="ranges = min/max seen in calibration"),
    StaticSettings(
        "static-percentile",
        calibration="percentile",
        notes="ranges clip the 0.001% most extreme calibration values (GELU/attention outliers)",
    ),
    StaticSettings(
        "static-entropy",
        calibration="entropy",
        notes="ranges minimise the KL divergence of the quantised histogram",
    ),
    StaticSettings(
        "static-minmax-ffn-down-fp32",
        exclude_patterns=("ffn/down",),
        notes="the feed-forward output projections (input: GELU output, long-tailed) stay fp32",
    ),
    StaticSettings(
        "static-minmax-3-most-sensitive-fp32",
        fp32_most_sensitive=3,
        notes="the 3 MatMuls with the noisiest int8 input (measured) stay fp32",
    ),
    StaticSettings(
        "static-minmax-6-most-sensitive-fp32",
        fp32_most_sensitive=6,
        notes="the 6 MatMuls with the noisiest int8 input (measured) stay fp32",
    ),
    StaticSettings(
        "static-percentile-6-most-sensitive-fp32",
        calibration="percentile",
        fp32_most_sensitive=6,
        notes="the 6 MatMuls with the noisiest int8 input (measured) stay fp32",
    ),
    *(
        StaticSettings(
            f"static-minmax-{k}-most-harmful-fp32",
            fp32_most_harmful=k,
            notes=f"the {k} MatMul(s) whose int8 output hurts the labels most (measured) stay fp32",
        )
        for k in range(1, HARM_RANKING_STEPS + 1)
    ),
    StaticSettings(
        "static-percentile-ffn-down-and-last-layer-fp32",
        calibration="percentile",
        exclude_patterns=("ffn/down",),
        fp32_last_layers=1,
        notes="as above, and the last layer's MatMuls (read by the classifier) stay fp32",
    ),
)


class _FeedsReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over prepared feeds, with the
    ranges its strided calibration asks for (one batch at a time: batches differ in length,
    which the histogram calibrators cannot stack)."""

    def __init__(self, batches: Sequence[Feeds]) -> None:
        self._batches = list(batches)
        self._next, self._end = 0, len(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, end_index

    def get_next(self) -> Feeds | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def __iter__(self) -> Iterator[Feeds]:
        while (feeds := self.get_next()) is not None:
            yield feeds


def prepare_for_calibration(src: Path, dst: Path) -> Path:
    """`src` with every tensor's type and shape recorded (symbolic shape inference knows the
    optimiser's contrib ops): without them the quantiser cannot tell which MatMul inputs are
    float activations and quantises only the weights."""
    # Imported on use: only --quantize needs onnxruntime.quantization (~0.3 s to load).
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not dst.is_file():
        quant_pre_process(str(src), str(dst), skip_optimization=True, auto_merge=True)
    return dst


def quantize_static_int8(
    src: Path, dst: Path, settings: StaticSettings, calibration: Sequence[Feeds], work_dir: Path
) -> dict[str, int]:
    """Quantise `src` into `dst` calibrated on `calibration` (the graph's feeds, one dict per
    batch); returns the count of integer MatMuls (both inputs dequantised) and of the
    quantised activation tensors."""
    # Imported on use, as in prepare_for_calibration.
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    prepared = prepare_for_calibration(src, work_dir / "int8-static-prepared.onnx")
    model = onnx.load(str(prepared))
    names = [node.name for node in model.graph.node]
    patterns = settings.exclude_patterns + last_layer_patterns(names, settings.fp32_last_layers)
    exclude = [name for name in names if any(p in name for p in patterns)]
    if settings.fp32_most_sensitive:
        probe = work_dir / "int8-static-sensitivity.onnx"
        everything = replace(settings, fp32_most_sensitive=0)
        quantize_static_int8(src, probe, everything, calibration, work_dir)
        ranked = sorted(input_sqnr(probe, calibration).items(), key=lambda kv: kv[1])
        exclude += [name for name, _ in ranked[: settings.fp32_most_sensitive]]
        logger.info("most sensitive MatMuls (input SQNR dB): %s", ranked[:8])
    if settings.fp32_most_harmful:
        ranking = _harm_ranking(src, prepared, settings, calibration, work_dir)
        exclude += ranking[: settings.fp32_most_harmful]
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    extra: dict[str, object] = {
        "DefaultTensorType": onnx.TensorProto.FLOAT,
        "CalibStridedMinMax": 1,  # collect batch by batch (see _FeedsReader)
    }
    if not settings.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    if settings.calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    quantize_static(
        str(prepared),
        str(dst),
        _FeedsReader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=settings.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        calibrate_method=methods[settings.calibration],
        extra_options=extra,
    )
    model = onnx.load(str(dst))
    if settings.float_residuals:
        read_float_outside_matmuls(model)
        onnx.save(model, str(dst))
    return qdq_counts(model)


def read_float_outside_matmuls(model: onnx.ModelProto) -> None:
    """Make every consumer of a quantised activation other than a MatMul read the float tensor
    again.

    The QDQ quantiser shares one Quantize/DequantizeLinear pair among all readers of a tensor, so
    a LayerNormalization output that feeds both the feed-forward MatMul and the residual
    SkipLayerNormalization puts int8 rounding into the residual stream, which carries it through
    every layer above. Only the MatMuls run integer kernels; nothing else gains from the rounding.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            node.input[i] = float_source(producer, name) or name


def _harm_ranking(
    src: Path,
    prepared: Path,
    settings: StaticSettings,
    calibration: Sequence[Feeds],
    work_dir: Path,
) -> list[str]:
    """The MatMuls in greedy harm order for this calibration method (cached in work_dir: every
    most-harmful candidate of one export shares it)."""
    residuals = "float" if settings.float_residuals else "int8"
    cache = work_dir / f"int8-harm-ranking-{settings.calibration}-{residuals}-residuals.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    probe = cache.with_suffix(".onnx")
    everything = replace(
        settings,
        fp32_most_harmful=0,
        fp32_most_sensitive=0,
        exclude_patterns=(),
        fp32_last_layers=0,
    )
    quantize_static_int8(src, probe, everything, calibration, work_dir)
    ranking = greedy_harm_ranking(prepared, probe, calibration, HARM_RANKING_STEPS)
    probe.unlink(missing_ok=True)
    names = [name for name, _ in ranking]
    cache.write_text(json.dumps(names))
    return names


def input_sqnr(qdq_model: Path, calibration: Sequence[Feeds]) -> dict[str, float]:
    """Signal-to-quantisation-noise ratio (dB) of each QDQ MatMul's activation input over the
    calibration feeds: the tensor before QuantizeLinear against it after DequantizeLinear."""
    model = onnx.load(str(qdq_model))
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs: dict[str, tuple[str, str]] = {}  # MatMul name -> (float input, dequantised input)
    for node in model.graph.node:
        dq = producer.get(node.input[0]) if node.op_type == "MatMul" else None
        q = (
            producer.get(dq.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear"
            else None
        )
        if q is not None and q.op_type == "QuantizeLinear":
            pairs[node.name] = (q.input[0], dq.output[0])  # type: ignore[union-attr]
    existing = {o.name for o in model.graph.output}
    for tensor in {t for pair in pairs.values() for t in pair} - existing:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep Q/DQ
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    for feeds in calibration:
        values = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        for name, (before, after) in pairs.items():
            x, y = values[before].astype(np.float64), values[after].astype(np.float64)
            signal[name] += float((x * x).sum())
            noise[name] += float(((x - y) ** 2).sum())
    return {n: 10 * np.log10(signal[n] / max(noise[n], 1e-30)) for n in pairs}


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """{"QDQMatMul": MatMuls whose two inputs are both dequantised int8, "QuantizeLinear": n}."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = sum(
        1
        for n in model.graph.node
        if n.op_type == "MatMul" and all(i in dequantized for i in n.input)
    )
    quantize = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
    return {"QDQMatMul": matmuls, "QuantizeLinear": quantize} if matmuls else {}
