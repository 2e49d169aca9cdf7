"""Dynamic int8 quantisation: the candidate settings and how each is applied.

Dynamic quantisation stores MatMul (and fused Attention) weights as int8 and quantises
activations to uint8 on the fly. Which settings keep accuracy depends on the model and the CPU:
on AVX2 machines without VNNI the u8 x s8 kernels can saturate their int16 intermediates, and
signed per-tensor weights on every MatMul measurably hurt MiniLM
(../shared/reference/measurements.md). So instead of trusting a default the exporter tries them
all, with the static candidates of export.quantize_static, and keeps the fastest inside the
accuracy gate (export.int8_choice); every attempt is recorded in the manifest.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantSettings:
    name: str
    op_types: tuple[str, ...] = ("MatMul", "Attention")  # embeddings (Gather) stay fp32
    per_channel: bool = False  # one scale per output column instead of per tensor
    reduce_range: bool = False  # 7-bit weights: avoids u8s8 saturation on non-VNNI CPUs
    exclude_patterns: tuple[str, ...] = ()  # node-name substrings kept in fp32
    fp32_last_layers: int = 0  # MatMuls of the encoder's last N layers stay fp32
    notes: str = ""


# From most aggressive (fastest, least accurate) to most conservative; every one is tried.
CANDIDATES: tuple[QuantSettings, ...] = (
    QuantSettings("per-tensor", notes="every MatMul/Attention, one scale per weight"),
    QuantSettings("per-channel", per_channel=True),
    QuantSettings("per-channel-reduce-range", per_channel=True, reduce_range=True),
    QuantSettings(
        "per-channel-ffn-down-fp32",
        per_channel=True,
        exclude_patterns=("ffn/down",),
        notes="the feed-forward output projections stay fp32: their input is GELU's output, "
        "the activation that dynamic per-tensor scales fit worst",
    ),
    QuantSettings(
        "per-channel-ffn-down-and-last-layer-fp32",
        per_channel=True,
        exclude_patterns=("ffn/down",),
        fp32_last_layers=1,
        notes="as above, and the last layer's MatMuls (whose output the classifier reads) stay "
        "fp32; its fused attention is still int8",
    ),
    QuantSettings(
        "attention-only",
        op_types=("Attention",),
        per_channel=True,
        reduce_range=True,
        notes="feed-forward MatMuls stay fp32 (fused-graph only)",
    ),
)


def last_layer_patterns(node_names: list[str], count: int) -> tuple[str, ...]:
    """Node-name substrings of the encoder's last `count` layers ("layers.5/" for the last of
    six), read from the exported names so the depth need not be known."""
    if count <= 0:
        return ()
    indices = {int(m.group(1)) for name in node_names if (m := _LAYER.search(name))}
    return tuple(f"layers.{i}/" for i in sorted(indices)[-count:])


_LAYER = re.compile(r"layers\.(\d+)/")


def quantize_int8(src: Path, dst: Path, settings: QuantSettings) -> dict[str, int]:
    """Quantise `src` into `dst`; returns the count of each quantised op type in the result."""
    # Imported on use: only --quantize needs onnxruntime.quantization (~0.3 s to load).
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    patterns = settings.exclude_patterns + last_layer_patterns(
        [node.name for node in model.graph.node], settings.fp32_last_layers
    )
    exclude = [
        node.name for node in model.graph.node if any(pattern in node.name for pattern in patterns)
    ]
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(settings.op_types),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        # The optimised graph holds contrib ops whose output types the quantizer cannot infer;
        # without a default it fails (../shared/reference/measurements.md).
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    quantized = onnx.load(str(dst))
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
