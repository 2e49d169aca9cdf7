"""Graph optimisation of BERT-style ONNX models with ONNX Runtime's transformer optimizer.

The optimizer pattern-matches the exported graph and replaces subgraphs by fused contrib ops.
It only finds the attention pattern in graphs from the TorchScript exporter with the eager
(explicit matmul-softmax) attention path, which is why the classifier export pins both
(see ../shared/reference/measurements.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)

# The fusions a BERT encoder is expected to get; reported with their counts in the manifest.
EXPECTED_BERT_FUSIONS = (
    "EmbedLayerNormalization",
    "Attention",
    "SkipLayerNormalization",
    "BiasGelu",
)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def optimize_bert(
    src: Path, dst: Path, num_heads: int, hidden_size: int, use_gpu: bool = False
) -> dict[str, object]:
    """Run the transformer optimizer on `src`, save to `dst`, return what was fused.

    opt_level=0 applies only the optimizer's own (provider-independent) fusions; ONNX Runtime's
    session-level optimisations still run when the service loads the model, so the saved graph
    stays valid for both the CPU and the CUDA execution provider.
    """
    from onnxruntime.transformers.optimizer import optimize_model  # ~0.9 s: only on --optimize

    before = onnx.load(str(src))
    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
        use_gpu=use_gpu,
    )
    stats = optimized.get_fused_operator_statistics()
    fusions = {op: int(n) for op, n in stats.items() if n}
    missing = [op for op in EXPECTED_BERT_FUSIONS if not stats.get(op)]
    if missing:
        logger.warning("transformer optimizer did not fuse %s", ", ".join(missing))
    optimized.save_model_to_file(str(dst))
    after = onnx.load(str(dst))
    return {
        "tool": "onnxruntime.transformers.optimizer (model_type=bert, opt_level=0)",
        "fusions": fusions,
        "missing_expected": missing,
        "nodes_before": len(before.graph.node),
        "nodes_after": len(after.graph.node),
    }


def convert_fp16(src: Path, dst: Path) -> dict[str, object]:
    """Convert weights and compute to float16, keeping float32 inputs/outputs (for CUDA).

    Keeping io types fp32 means the service feeds and reads the same dtypes for every precision;
    the casts at the graph boundary cost next to nothing.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel  # ~0.9 s: only on --fp16

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))
    return {
        "tool": "onnxruntime.transformers OnnxModel.convert_float_to_float16",
        "keep_io_types": True,
    }
