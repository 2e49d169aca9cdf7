"""Which quantised MatMuls hurt the model's output most: a greedy ranking on calibration texts.

The input-SQNR ranking (export.quantize_static.input_sqnr) says where int8 rounding is largest,
not where it matters: a noisy MatMul early in the encoder can be washed out by the layers above
it, a quiet one feeding the classifier can flip labels. This ranking measures the output itself.
Starting from the fully quantised QDQ graph, each step restores the one MatMul (activation and
weight back to fp32) whose restoring lowers most the mean KL divergence between the fp32
graph's label distribution and the candidate's on the calibration texts, and keeps it restored.
Restoring one MatMul in the QDQ graph is the same graph quantize_static builds with that node
excluded, since calibration ranges are taken on the fp32 graph, not on the quantised one.

Only training texts are used (the calibration sample), so the dev set that gates the result
plays no part in choosing what stays fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.runtime import make_session

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def greedy_harm_ranking(
    fp32_model: Path, qdq_model: Path, feeds: Sequence[Feeds], steps: int
) -> list[tuple[str, float]]:
    """[(MatMul name, mean KL after restoring it and the ones before it)] for `steps` steps.

    `fp32_model` is the graph `qdq_model` was quantised from (same node names)."""
    reference = _probabilities(_logits(make_session(fp32_model, 1, spinning=False), feeds))
    fp32_weights = _matmul_weights(onnx.load(str(fp32_model)))
    qdq = onnx.load(str(qdq_model))
    remaining = [name for name in _quantised_matmuls(qdq) if name in fp32_weights]
    restored: list[str] = []
    ranking: list[tuple[str, float]] = []
    for _ in range(min(steps, len(remaining))):
        scores = {}
        for name in remaining:
            trial = _restore(qdq, fp32_model_weights=fp32_weights, names=[*restored, name])
            session = make_session(trial.SerializeToString(), 1, spinning=False)
            scores[name] = _mean_kl(reference, _probabilities(_logits(session, feeds)))
        best = min(scores, key=scores.__getitem__)
        restored.append(best)
        remaining.remove(best)
        ranking.append((best, scores[best]))
        logger.info("int8 harm ranking: restoring %s -> mean KL %.3g", best, scores[best])
    return ranking


def float_source(producer: dict[str, onnx.NodeProto], tensor: str) -> str | None:
    """The float tensor behind `tensor` when it is DequantizeLinear(QuantizeLinear(float)) of
    an activation (`producer`: output name -> node), else None."""
    dq = producer.get(tensor)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def _quantised_matmuls(model: onnx.ModelProto) -> list[str]:
    producer = {o: n for n in model.graph.node for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[0] in producer
        and producer[n.input[0]].op_type == "DequantizeLinear"
    ]


def _matmul_weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """MatMul node name -> its constant weight (second input) in the fp32 graph."""
    initializers = {t.name: t for t in model.graph.initializer}
    return {
        n.name: initializers[n.input[1]]
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in initializers
    }


def _restore(
    qdq: onnx.ModelProto, fp32_model_weights: dict[str, onnx.TensorProto], names: Sequence[str]
) -> onnx.ModelProto:
    """A copy of `qdq` where the MatMuls `names` read the float activation and fp32 weight, and
    the Quantize/DequantizeLinear nodes nobody reads any more are dropped."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    producer = {o: n for n in model.graph.node for o in n.output}
    wanted = set(names)
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        node.input[0] = float_source(producer, node.input[0]) or node.input[0]
        weight = onnx.TensorProto()
        weight.CopyFrom(fp32_model_weights[node.name])
        weight.name = f"{node.name}/fp32_weight"
        model.graph.initializer.append(weight)
        node.input[1] = weight.name
    _drop_unread(model)
    return model


def _drop_unread(model: onnx.ModelProto) -> None:
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = {i for n in model.graph.node for i in n.input}
    for tensor in [t for t in model.graph.initializer if t.name not in read]:
        model.graph.initializer.remove(tensor)


def _logits(session: ort.InferenceSession, feeds: Sequence[Feeds]) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    return np.concatenate(
        [session.run(["logits"], {k: f[k] for k in names})[0] for f in feeds]
    ).astype(np.float64)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _mean_kl(reference: np.ndarray, probs: np.ndarray) -> float:
    eps = 1e-12
    return float(np.mean(np.sum(reference * (np.log(reference + eps) - np.log(probs + eps)), 1)))
