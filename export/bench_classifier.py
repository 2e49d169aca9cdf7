"""Classifier engines side by side: PyTorch eager vs ONNX Runtime fp32 / optimised / int8.

Every engine sees the same full (unpadded) batches of B sequences of exactly T tokens, so
throughput maps directly onto FLOPs. The ONNX models are the ones the exporter writes (same code
path, same parity checks), built into a scratch repository.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.classifier import export_classifier
from export.classifier_graph import load_classifier, torch_logits
from export.parity import ParityError
from export.roofline import bert_flops, round_robin
from export.runtime import classifier_logits, make_session
from export.text_inputs import Batch

logger = logging.getLogger(__name__)

ENGINES = ("pytorch-eager", "ort-fp32", "ort-optimized", "ort-int8")
GEMM = "gemm"  # the roofline probe timed alongside the engines


@dataclass
class Cell:
    engine: str
    batch: int
    seq_len: int
    iterations: int
    seq_per_s: float  # from the median call
    best_seq_per_s: float  # from the fastest call: the least disturbed on a shared machine
    p50_ms: float
    p90_ms: float
    p99_ms: float
    gflops: float  # achieved model GFLOP/s (matmuls only) of the fastest call
    gemm_gflops: float  # fp32 GEMM GFLOP/s (fastest call), timed interleaved with the engines
    roofline: float  # gflops / gemm_gflops


def synthetic_batch(batch: int, seq_len: int, vocab_size: int, seed: int = 0) -> Batch:
    """[CLS] random word ids [SEP], no padding: compute does not depend on the ids' values."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab_size, size=(batch, seq_len), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] / [SEP] in BERT uncased vocabularies
    ones = np.ones_like(ids)
    return Batch(ids, ones, np.zeros_like(ids))


def build_engines(
    checkpoint: Path, work: Path, threads: int, dev: Path | None
) -> tuple[dict[str, Callable[[Batch], np.ndarray]], dict[str, Any]]:
    """The four engines as batch -> logits functions, plus facts about the exported models."""
    torch.set_num_threads(threads)
    model, config, _ = load_classifier(checkpoint)  # as trained (SDPA attention): the baseline
    engines: dict[str, Callable[[Batch], np.ndarray]] = {
        "pytorch-eager": functools.partial(torch_logits, model)
    }
    facts: dict[str, Any] = {"encoder": config["encoder"]}
    variants: dict[str, dict[str, Any]] = {
        "ort-fp32": {},
        "ort-optimized": {"optimize": True},
        "ort-int8": {"optimize": True, "quantize": "int8", "dev": dev},
    }
    for engine, options in variants.items():
        t0 = time.perf_counter()
        try:
            version = export_classifier(
                checkpoint, work / "repo", name=engine, threads=threads, **options
            )
        except ParityError as err:  # e.g. no int8 setting keeps this model's accuracy
            logger.warning("%s not benchmarked: %s", engine, err)
            facts[engine] = f"not exported: {err.what}"
            if "attempts" in err.report:
                facts["int8_attempts"] = err.report["attempts"]
            continue
        logger.info("exported %s in %.1f s", engine, time.perf_counter() - t0)
        session = make_session(version / "model.onnx", threads, spinning=False)
        engines[engine] = functools.partial(classifier_logits, session)
        facts[engine] = str(version)
        if engine == "ort-int8":
            manifest = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
            facts["int8_settings"] = manifest["quantization"]["chosen"]
            facts["int8_parity"] = manifest["parity"]["int8"]
            facts["int8_attempts"] = manifest["quantization"]["attempts"]
            facts["int8_speed"] = manifest["quantization"].get("speed")
    return engines, facts


def run(
    checkpoint: Path,
    work: Path,
    threads: int,
    gemm: tuple[Callable[[], Any], float],
    batch_sizes: Sequence[int],
    seq_lens: Sequence[int],
    min_time: float,
    dev: Path | None = None,
    engines_wanted: Sequence[str] = ENGINES,
) -> dict[str, Any]:
    """Time every engine on every (batch, length) cell, interleaved with a GEMM (the roofline)."""
    engines, facts = build_engines(checkpoint, work, threads, dev)
    encoder = facts["encoder"]
    gemm_fn, gemm_flops = gemm
    cells: list[Cell] = []
    for seq_len in seq_lens:
        if seq_len > encoder["max_position_embeddings"]:
            raise ValueError(f"seq_len {seq_len} exceeds the model's positions")
        flops = bert_flops(encoder, seq_len)
        for batch_size in batch_sizes:
            batch = synthetic_batch(batch_size, seq_len, encoder["vocab_size"])
            fns: dict[str, Callable[[], Any]] = {
                name: functools.partial(engines[name], batch)
                for name in engines_wanted
                if name in engines
            }
            times = round_robin({**fns, GEMM: gemm_fn}, min_time)
            cell_gemm = gemm_flops / min(times.pop(GEMM)) / 1e9
            for name, engine_times in times.items():
                cell = _cell(name, batch_size, seq_len, engine_times, flops, cell_gemm)
                logger.info(
                    "%-14s B%-3d T%-4d %8.1f seq/s (best %8.1f) p50 %8.2f ms  %5.1f%% of %.0f",
                    name,
                    batch_size,
                    seq_len,
                    cell.seq_per_s,
                    cell.best_seq_per_s,
                    cell.p50_ms,
                    100 * cell.roofline,
                    cell_gemm,
                )
                cells.append(cell)
    return {
        "checkpoint": str(checkpoint),
        "models": {k: v for k, v in facts.items() if k != "encoder"},
        "encoder": encoder,
        "mflop_per_sequence": {str(t): bert_flops(encoder, t) / 1e6 for t in seq_lens},
        "cells": [asdict(c) for c in cells],
    }


def _cell(
    engine: str, batch: int, seq_len: int, times: list[float], flops: float, gemm_gflops: float
) -> Cell:
    p50, p90, p99 = (float(np.percentile(times, q)) for q in (50, 90, 99))
    best = batch / min(times)
    gflops = best * flops / 1e9
    return Cell(
        engine,
        batch,
        seq_len,
        len(times),
        batch / p50,
        best,
        p50 * 1e3,
        p90 * 1e3,
        p99 * 1e3,
        gflops,
        gemm_gflops,
        gflops / gemm_gflops,
    )
