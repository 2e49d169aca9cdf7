"""Translator decoding speed: PyTorch vs ONNX Runtime, greedy and beam 4, with and without cache.

"Without the cache" re-runs the decoder over the whole target prefix at every step (the encoder
still runs once): PyTorch through `use_cache=False` of model_src's decoder, ONNX Runtime through
two bench-only graphs (encoder -> memory, full-prefix decoder -> last logits) driven by the same
search code as the served cached graphs. Throughput is generated target tokens per second.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export import torchscript
from export.roofline import decoder_step_flops, round_robin
from export.runtime import make_session
from export.translator import export_translator
from export.translator_graph import with_eager_attention
from model_src.translator.checkpoint import load_translator
from model_src.translator.data import pad
from model_src.translator.decoding import beam_search, greedy_decode
from model_src.translator.tokenizer import encode
from model_src.translator.transformer import Transformer
from service.engines.generation import OnnxGenerator

logger = logging.getLogger(__name__)


# --- the uncached ONNX baseline ------------------------------------------------------------------


class _MemoryGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(src_ids)  # memory (B,S,D), memory_mask (B,S)


class _FullPrefixGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor
    ) -> torch.Tensor:
        return self.model.decode(memory, memory_mask, prefix)[:, -1]  # (B, V): last position


def export_uncached_graphs(model: Transformer, out_dir: Path) -> tuple[Path, Path]:
    """encoder_memory.onnx and decoder_full.onnx (bench only; never served)."""
    src = torch.full((2, 5), model.config.eos_id, dtype=torch.long)
    memory_path, full_path = out_dir / "encoder_memory.onnx", out_dir / "decoder_full.onnx"
    torchscript.export(
        _MemoryGraph(model),
        (src,),
        memory_path,
        ["src_ids"],
        ["memory", "memory_mask"],
        {
            "src_ids": {0: "batch", 1: "src_len"},
            "memory": {0: "batch", 1: "src_len"},
            "memory_mask": {0: "batch", 1: "src_len"},
        },
    )
    with torch.no_grad():
        memory, memory_mask = model.encode(src)
    prefix = torch.full((2, 3), model.config.sos_id, dtype=torch.long)
    torchscript.export(
        _FullPrefixGraph(model),
        (memory, memory_mask, prefix),
        full_path,
        ["memory", "memory_mask", "prefix"],
        ["logits"],
        {
            "memory": {0: "batch", 1: "src_len"},
            "memory_mask": {0: "batch", 1: "src_len"},
            "prefix": {0: "batch", 1: "tgt_len"},
            "logits": {0: "batch"},
        },
    )
    return memory_path, full_path


@dataclass
class PrefixState:
    """Uncached decoding: the encoder output and every token fed so far."""

    memory: np.ndarray  # (B, S, D)
    memory_mask: np.ndarray  # (B, S)
    prefix: np.ndarray  # (B, t)

    def select(self, index: np.ndarray, cross: bool = True) -> PrefixState:
        return PrefixState(
            self.memory[index] if cross else self.memory,
            self.memory_mask[index] if cross else self.memory_mask,
            self.prefix[index],
        )


class UncachedOnnxGenerator(OnnxGenerator):
    """The served search loop, but every step re-decodes the whole prefix."""

    def __init__(
        self,
        memory_session: ort.InferenceSession,
        full_session: ort.InferenceSession,
        ids: OnnxGenerator,
    ) -> None:
        # Not calling super().__init__: these graphs have a different interface by design.
        self.encoder, self.decoder = memory_session, full_session
        self.pad_id, self.sos_id, self.eos_id = ids.pad_id, ids.sos_id, ids.eos_id
        self.max_positions = ids.max_positions

    def start(self, src_ids: np.ndarray) -> PrefixState:  # type: ignore[override]
        memory, memory_mask = self.encoder.run(None, {"src_ids": src_ids.astype(np.int64)})
        return PrefixState(memory, memory_mask, np.zeros((src_ids.shape[0], 0), np.int64))

    def step(  # type: ignore[override]
        self, state: PrefixState, tokens: np.ndarray
    ) -> tuple[np.ndarray, PrefixState]:
        prefix = np.concatenate([state.prefix, tokens[:, None].astype(np.int64)], axis=1)
        feeds = {"memory": state.memory, "memory_mask": state.memory_mask, "prefix": prefix}
        (logits,) = self.decoder.run(["logits"], feeds)
        logits[:, self.pad_id] = -np.inf
        logits[:, self.sos_id] = -np.inf
        return logits, PrefixState(state.memory, state.memory_mask, prefix)


# --- the benchmark -------------------------------------------------------------------------------


@dataclass
class DecodeCell:
    engine: str  # pytorch | ort
    search: str  # greedy | beam4
    cache: bool
    sentences: int
    tokens: int  # generated target tokens (best hypotheses)
    seconds: float  # median wall time of one batched call
    tokens_per_s: float  # from the median call
    best_tokens_per_s: float  # from the fastest call
    gflops: float  # decoder-step matmul GFLOP/s of the generated tokens (all beams), fastest
    gemm_gflops: float  # fp32 GEMM GFLOP/s timed interleaved with these runs
    roofline: float  # gflops / gemm_gflops


def _key(key: tuple[str, str, bool]) -> str:
    engine, search, cache = key
    return f"{engine}/{search}/{'cache' if cache else 'no-cache'}"


def run(
    checkpoint: Path,
    work: Path,
    threads: int,
    gemm: tuple[Callable[[], Any], float],
    sources_text: Sequence[str],
    max_new_tokens: int,
    min_time: float,
    beam_size: int = 4,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model, config, tokenizer = load_translator(checkpoint)
    if not isinstance(model, Transformer):
        raise ValueError(f"{checkpoint}: only the Transformer translator is benchmarked")
    version = export_translator(
        checkpoint, work / "repo", name="translator", threads=threads, max_new_tokens=max_new_tokens
    )
    cached = OnnxGenerator(
        make_session(version / "encoder.onnx", threads, spinning=False),
        make_session(version / "decoder.onnx", threads, spinning=False),
    )
    memory_path, full_path = export_uncached_graphs(with_eager_attention(model), work)
    uncached = UncachedOnnxGenerator(
        make_session(memory_path, threads, spinning=False),
        make_session(full_path, threads, spinning=False),
        cached,
    )
    sources = encode(tokenizer, list(sources_text), int(config["max_length"]))
    src = pad(sources)
    src_np = src.numpy()

    runners: dict[tuple[str, str, bool], Callable[[], list[list[int]]]] = {}
    for use_cache in (True, False):
        gen = cached if use_cache else uncached
        beam = f"beam{beam_size}"
        runners[("pytorch", "greedy", use_cache)] = functools.partial(
            greedy_decode, model, src, max_new_tokens, use_cache=use_cache
        )
        runners[("pytorch", beam, use_cache)] = functools.partial(
            beam_search, model, src, beam_size, max_new_tokens, use_cache=use_cache
        )
        runners[("ort", "greedy", use_cache)] = functools.partial(
            gen.greedy, src_np, max_new_tokens
        )
        runners[("ort", beam, use_cache)] = functools.partial(
            gen.beam_search, src_np, beam_size, max_new_tokens
        )

    mean_src = float(np.mean([len(s) for s in sources]))
    outputs = {key: fn() for key, fn in runners.items()}  # token counts (and a warm-up)
    gemm_fn, gemm_flops = gemm
    named: dict[str, Callable[[], Any]] = {_key(k): fn for k, fn in runners.items()}
    times = round_robin({**named, "gemm": gemm_fn}, min_time, min_rounds=2, warmup=0)
    cell_gemm = gemm_flops / min(times.pop("gemm")) / 1e9
    cells: list[DecodeCell] = []
    for (engine, search, use_cache), out in outputs.items():
        runs = times[_key((engine, search, use_cache))]
        seconds, best = float(np.median(runs)), min(runs)
        tokens = sum(len(o) for o in out)
        beams = beam_size if search != "greedy" else 1
        step_flops = sum(
            decoder_step_flops(config["model"], round(mean_src), t)
            for o in out
            for t in range(len(o))
        )
        gflops = beams * step_flops / best / 1e9
        cell = DecodeCell(
            engine,
            search,
            use_cache,
            len(sources),
            tokens,
            seconds,
            tokens / seconds,
            tokens / best,
            gflops,
            cell_gemm,
            gflops / cell_gemm,
        )
        logger.info(
            "%-7s %-6s cache=%-5s %8.1f tokens/s (%d tokens, %.3f s)",
            engine,
            search,
            use_cache,
            cell.tokens_per_s,
            tokens,
            seconds,
        )
        cells.append(cell)
    return {
        "checkpoint": str(checkpoint),
        "model": config["model"],
        "sentences": len(sources),
        "max_new_tokens": max_new_tokens,
        "mean_source_tokens": mean_src,
        "cells": [asdict(c) for c in cells],
    }
