"""Fold each int8 MatMul's bias into its kernel: the last step of the translator's int8 graphs.

ONNX Runtime turns a static QDQ MatMul (a dequantised int8 activation times dequantised int8
weights, output left fp32) into one `MatMulIntegerToFloat` node when it loads the graph, but
the bias `Add` after it stays a node of its own, although that kernel takes a bias input: 24 of
the recipe translator decoder's 135 nodes after optimisation, each an extra pass over the
activations and an extra kernel launch per decoder step. Here the graph is optimised once, at
the "extended" level (provider-level fusions for the CPU execution provider, nothing specific
to this machine's instruction set, unlike "all"'s NCHWc layouts), each such `Add` is folded
into its MatMul's bias, and that graph is what the repository serves.

The folded kernel adds the same bias to the same fp32 product, so outputs are bitwise those of
the unfolded graph (checked on the caller's feeds before the file is written; a graph that
differs is kept unfolded). Measured on the recipe's int8 translator (2-vCPU VM, stop 35 of
reports/translation-benchmark.md): decoder step at 16 rows 1.91 -> 1.75 ms, encoder of 4
sentences 2.47 -> 2.31 ms, a lane's CPU per sentence 3.34 -> 3.08 ms with the same ids.

int8 graphs are served on CPU only (DESIGN: fp32/fp16 on CUDA), which is what this optimised
graph assumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.quantize_static import Feeds
from export.runtime import make_session

logger = logging.getLogger(__name__)

INTEGER_MATMUL = "MatMulIntegerToFloat"
BIAS_INPUT = 6  # MatMulIntegerToFloat's optional bias: A, B, a_scale, b_scale, a_zp, b_zp, bias


def optimised_for_cpu(src: Path, dst: Path) -> None:
    """Write `src` as ONNX Runtime optimises it at the "extended" level for the CPU provider."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def fold_biases(model: onnx.ModelProto) -> int:
    """Fold every `Add(MatMulIntegerToFloat(...), bias)` with a 1-D constant bias, whose MatMul
    output has no other reader, into the MatMul's bias input; returns how many were folded."""
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    graph_outputs = {out.name for out in graph.output}
    folded = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        first, second = add.input
        product, bias = (second, first) if first in constants else (first, second)
        matmul = producer.get(product)
        if (
            matmul is None
            or matmul.op_type != INTEGER_MATMUL
            or bias not in constants
            or len(constants[bias].dims) != 1
            or readers.get(product) != 1
            or product in graph_outputs
        ):
            continue
        inputs = [*matmul.input, *[""] * (BIAS_INPUT + 1 - len(matmul.input))]
        if inputs[BIAS_INPUT]:
            continue  # already has a bias
        inputs[BIAS_INPUT] = bias
        del matmul.input[:]
        matmul.input.extend(inputs)
        matmul.output[0] = add.output[0]
        folded.append(add)
    for add in folded:
        graph.node.remove(add)
    return len(folded)


def fold_int8_biases(src: Path, dst: Path, feeds: Sequence[Feeds], work_dir: Path) -> int:
    """`src` (an int8 QDQ graph) -> `dst`, optimised and with its MatMul biases folded when the
    result gives bitwise the same outputs on `feeds`; else `dst` is `src` as it was. Returns the
    count of folded biases (0: kept as it was)."""
    optimised = work_dir / f"{src.stem}-extended.onnx"
    optimised_for_cpu(src, optimised)
    model = onnx.load(str(optimised))
    folded = fold_biases(model)
    candidate = model.SerializeToString()
    if folded and _same_outputs(src.read_bytes(), candidate, feeds):
        dst.write_bytes(candidate)
        return folded
    if folded:
        logger.warning("%s: folding MatMul biases changed outputs; kept unfolded", src.name)
    dst.write_bytes(src.read_bytes())
    return 0


def _same_outputs(reference: bytes, candidate: bytes, feeds: Sequence[Feeds]) -> bool:
    sessions = [make_session(graph, threads=1, spinning=False) for graph in (reference, candidate)]
    for feed in feeds:
        expected, got = (s.run(None, feed) for s in sessions)
        if not all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)):
            return False
    return True
