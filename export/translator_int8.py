"""int8 for the translator's encoder and decoder step: static (calibrated) QDQ, weights per
channel.

The decoder step is what a translation's time goes to (reports/translation-benchmark.md), and at
the rows a step scheduler's lane runs (1-16) it is bound by reading its fp32 weights: one row
costs 0.8 ms of a 1.0 + 0.166 ms/row line on the dev VM. Every weight MatMul (the attention and
feed-forward projections of each layer, and the vocabulary projection) gets int8 weights and a
fixed activation scale calibrated on decoder inputs recorded while decoding training sentences;
the attention's own MatMuls (scores, weighted values: activation x activation) stay fp32. The
encoder's weight MatMuls get the same treatment, calibrated on the encoder inputs of the same
sentences: the step scheduler encodes its joiners one or two at a time, where the fp32 encoder
took 27.6% of a lane's time (reports/translation-benchmark.md, stop 27). Static scales keep a
row's result independent of the other rows in its run, so a sentence still decodes to the same
ids alone or in any batch (checked below), which the step scheduler's identical-output guarantee
rests on.

The gate (all on the dev sentences, against the fp32 ONNX graphs): greedy and beam-4 BLEU within
`max_bleu_drop` of fp32's, and greedy ids identical alone and batched. Tried in order: encoder
and decoder int8, then the decoder alone; the first that passes is kept, else fp32.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import sacrebleu

from export.int8_fold import fold_int8_biases
from export.quantize_static import StaticSettings, quantize_static_int8
from service.engines.generation import DecoderState, OnnxGenerator

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]

CALIBRATION_BATCH = 8
CALIBRATION_MAX_NEW_TOKENS = 64
IDENTITY_SENTENCES = 32  # decoded alone and in one batch: ids must match
SPEED_ROWS = (1, 8, 32)  # decoder step timed at these row counts
ENCODE_SENTENCES = (1, 8)  # encoder timed at these batch sizes
FOLD_CHECK_FEEDS = 8  # calibration feeds the folded graph must reproduce bitwise


class _Recorder:
    """A session that keeps a copy of every run's feeds (the encoder's; the decoder step's are
    recorded by the generator, which binds them in place)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.feeds: list[Feeds] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, outputs: Sequence[str], feeds: dict[str, Any]) -> Any:
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(outputs, feeds)


def calibration_feeds(
    generator: OnnxGenerator, sources: Sequence[Sequence[int]]
) -> tuple[list[Feeds], list[Feeds]]:
    """The encoder's inputs and the decoder step's (every other step: consecutive steps differ by
    one cache column) while greedy-decoding `sources` in batches."""
    encoder = _Recorder(generator.encoder)
    generator.encoder, generator.recorded_feeds = encoder, []
    try:
        for start in range(0, len(sources), CALIBRATION_BATCH):
            batch = sources[start : start + CALIBRATION_BATCH]
            generator.generate(batch, max_new_tokens=CALIBRATION_MAX_NEW_TOKENS)
        decoder_feeds = generator.recorded_feeds
    finally:
        generator.encoder, generator.recorded_feeds = encoder.session, None
    return encoder.feeds, decoder_feeds[::2]


def weight_matmuls_only(decoder: Path) -> tuple[str, ...]:
    """Names of the MatMuls whose second input is not a weight (attention scores and values):
    they stay fp32."""
    model = onnx.load(str(decoder), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return tuple(
        n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in weights
    )


def quantize_graph(
    src: Path, dst: Path, calibration: Sequence[Feeds], work_dir: Path
) -> dict[str, int]:
    """`src` (encoder.onnx or decoder.onnx) -> `dst` with int8 weight MatMuls, their biases
    folded into the integer kernels (export.int8_fold); counts of quantised nodes and folds."""
    settings = StaticSettings(
        f"{src.stem}-static-minmax",
        exclude_patterns=weight_matmuls_only(src),
        notes="weight MatMuls int8 (per-channel), attention score/value MatMuls fp32",
    )
    qdq = work_dir / f"{src.stem}-qdq.onnx"
    counts = quantize_static_int8(src, qdq, settings, calibration, work_dir)
    folded = fold_int8_biases(qdq, dst, calibration[:FOLD_CHECK_FEEDS], work_dir)
    return {**counts, "MatMulBiasFolded": folded}


def bleu(
    generator: OnnxGenerator,
    sources: Sequence[Sequence[int]],
    detokenize: Callable[[list[list[int]]], list[str]],
    references: Sequence[str],
    beam_size: int,
    max_new_tokens: int,
) -> float:
    hypotheses: list[str] = []
    for start in range(0, len(sources), 32):
        hypotheses += detokenize(
            generator.generate(sources[start : start + 32], beam_size, max_new_tokens)
        )
    return float(sacrebleu.corpus_bleu(hypotheses, [list(references)]).score)


def batch_invariant(generator: OnnxGenerator, sources: Sequence[Sequence[int]]) -> int:
    """How many of `sources` decode (greedy) to other ids in one batch than alone."""
    batched = generator.generate(sources, max_new_tokens=CALIBRATION_MAX_NEW_TOKENS)
    alone = [generator.generate([s], max_new_tokens=CALIBRATION_MAX_NEW_TOKENS)[0] for s in sources]
    return sum(a != b for a, b in zip(alone, batched, strict=True))


def _median_ms(run: Callable[[], Any], repeats: int = 30) -> float:
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def encode_ms(generator: OnnxGenerator, sentences: int) -> float:
    """Median ms of one encoder run over `sentences` sources of 16 tokens."""
    src = generator.pad([[5] * 16] * sentences)
    return _median_ms(lambda: generator.start(src))


def step_ms(generator: OnnxGenerator, rows: int) -> float:
    """Median ms of one decoder step of `rows` rows (cache and source 16 positions)."""
    meta = generator.decoder.get_modelmeta().custom_metadata_map
    L, H, hd = (int(meta[k]) for k in ("num_layers", "num_heads", "head_dim"))
    rng = np.random.default_rng(0)

    def noise(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    state = DecoderState(
        memory_mask=np.ones((rows, 16), bool),
        cross_k=noise(L, rows, H, 16, hd),
        cross_v=noise(L, rows, H, 16, hd),
        self_k=noise(L, rows, H, 16, hd),
        self_v=noise(L, rows, H, 16, hd),
        position=np.full(rows, 16, np.int64),
    )
    tokens = np.full(rows, 5, np.int64)
    return _median_ms(lambda: generator.step(state, tokens))


def int8_report(
    fp32: OnnxGenerator,
    int8: OnnxGenerator,
    sources: Sequence[Sequence[int]],
    detokenize: Callable[[list[list[int]]], list[str]],
    references: Sequence[str],
    max_new_tokens: int,
    max_bleu_drop: float,
    fp32_known: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The gate's measurements and verdict (`passed`), and the encoder's and decoder step's
    speed. `fp32_known`: fp32's figures (BLEU by search, timings), filled on first use and reused
    by a later attempt against the same fp32 graphs."""
    known = {} if fp32_known is None else fp32_known

    def fp32_figure(key: str, measure: Callable[[], float]) -> float:
        if key not in known:
            known[key] = measure()
        return known[key]

    report: dict[str, Any] = {"sentences": len(sources), "max_bleu_drop": max_bleu_drop}
    for name, beams in (("greedy", 1), ("beam4", 4)):
        a = fp32_figure(
            name, partial(bleu, fp32, sources, detokenize, references, beams, max_new_tokens)
        )
        b = bleu(int8, sources, detokenize, references, beams, max_new_tokens)
        report[f"{name}_bleu_fp32"], report[f"{name}_bleu_int8"] = round(a, 2), round(b, 2)
        report[f"{name}_bleu_drop"] = round(a - b, 2)
    report["batch_differences"] = batch_invariant(int8, sources[:IDENTITY_SENTENCES])
    report["encode_ms"] = {
        str(n): {
            "fp32": fp32_figure(f"encode{n}", partial(encode_ms, fp32, n)),
            "int8": encode_ms(int8, n),
        }
        for n in ENCODE_SENTENCES
    }
    report["step_ms"] = {
        str(rows): {
            "fp32": fp32_figure(f"step{rows}", partial(step_ms, fp32, rows)),
            "int8": step_ms(int8, rows),
        }
        for rows in SPEED_ROWS
    }
    report["passed"] = (
        report["greedy_bleu_drop"] <= max_bleu_drop
        and report["beam4_bleu_drop"] <= max_bleu_drop
        and report["batch_differences"] == 0
    )
    logger.info("int8 translator: %s", report)
    return report
