"""The machine's fp32 GEMM ceiling and the models' FLOPs, to read benchmark results against.

Only matrix multiplications are counted (2 FLOPs per multiply-add): they are >95% of the work of
both models, and they are what the GEMM ceiling measures. A result's "roofline fraction" is
(achieved model FLOP/s) / (fp32 GEMM FLOP/s with the same threads). On a shared machine the GEMM
is timed interleaved with the engines it is compared to (`round_robin`), so both see the same
load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from export.runtime import make_session


def round_robin(
    fns: dict[str, Callable[[], Any]], min_time: float, min_rounds: int = 3, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn (order rotated every round).

    On a shared machine the load changes from second to second; interleaving the engines makes
    every one of them see the same conditions, so their ratios stay meaningful. Runs at least
    `min_rounds` rounds and at least `min_time` seconds per function.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_time * len(names):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def gemm_callables(threads: int, n: int = 1024) -> tuple[dict[str, Callable[[], Any]], float]:
    """fp32 n x n x n GEMM calls (PyTorch and an ONNX Runtime MatMul) and their FLOPs."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [onnx.numpy_helper.from_array(weight, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = make_session(model.SerializeToString(), threads, spinning=False)
    x = rng.standard_normal((n, n), dtype=np.float32)
    fns: dict[str, Callable[[], Any]] = {
        "torch": lambda: torch.mm(a, b),
        "ort": lambda: session.run(None, {"a": x}),
    }
    return fns, 2.0 * n**3


def gemm_gflops(threads: int, n: int = 1024, min_time: float = 0.5) -> dict[str, float]:
    """Median fp32 GEMM GFLOP/s with `threads` threads: PyTorch (torch.mm) and ORT MatMul."""
    fns, flops = gemm_callables(threads, n)
    times = round_robin(fns, min_time)
    return {
        "n": n,
        "threads": threads,
        **{name: flops / float(np.median(t)) / 1e9 for name, t in times.items()},
    }


def bert_flops(encoder: dict[str, Any], seq_len: int) -> float:
    """Matmul FLOPs of one sequence through a BERT encoder (the head is negligible)."""
    H, F = encoder["hidden_size"], encoder["intermediate_size"]
    L, T = encoder["num_hidden_layers"], seq_len
    projections = 4 * 2 * T * H * H  # Q, K, V, output
    attention = 2 * 2 * T * T * H  # scores Q K^T and weights @ V, all heads together
    ffn = 2 * 2 * T * H * F  # up and down
    return float(L * (projections + attention + ffn))


def decoder_step_flops(model: dict[str, Any], src_len: int, position: int) -> float:
    """Matmul FLOPs of one cached Transformer decoder step for one hypothesis at `position`."""
    D, F, V, L = model["d_model"], model["d_ff"], model["vocab_size"], model["n_decoder_layers"]
    self_attn = 4 * 2 * D * D + 2 * 2 * (position + 1) * D  # q,k,v,out + attend over the cache
    cross_attn = 2 * 2 * D * D + 2 * 2 * src_len * D  # q,out (K/V precomputed) + attend
    ffn = 2 * 2 * D * F
    return float(L * (self_attn + cross_attn + ffn) + 2 * D * V)
