"""Choose the int8 graph to publish: every candidate measured, the gate first, then speed.

Candidates are static (calibrated QDQ, export.quantize_static) and dynamic (export.quantize)
settings. Each is built and scored on the dev sample (label agreement with fp32, accuracy drop,
and whether a text's logits change with the batch it is run in: dynamic scales usually do, and
such settings stay in the record of what was tried but out of the gate); of those inside the gate,
the fastest on this CPU wins (sequences/s at batch 16 x 32 tokens and
32 x 64 tokens, the batches the server forms; geometric mean). Every attempt is timed, inside the
gate or not, and goes into the manifest with its speed, so the table of settings tried (what the
gate cost) is the export's own record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export import quantize, quantize_static
from export.runtime import input_names, make_session
from export.text_inputs import encode, varied_batches

logger = logging.getLogger(__name__)

# (batch, tokens): batches a loaded server forms (8-32 sequences of 16-64 tokens).
SPEED_SHAPES: tuple[tuple[int, int], ...] = ((16, 32), (32, 64))


@dataclass(frozen=True)
class Int8Candidate:
    method: Literal["static", "dynamic"]
    settings: quantize.QuantSettings | quantize_static.StaticSettings

    @property
    def name(self) -> str:
        return self.settings.name


def all_candidates() -> tuple[Int8Candidate, ...]:
    return tuple(Int8Candidate("static", s) for s in quantize_static.STATIC_CANDIDATES) + tuple(
        Int8Candidate("dynamic", s) for s in quantize.CANDIDATES
    )


def select_candidates(names: Sequence[str] | None) -> tuple[Int8Candidate, ...]:
    """The candidates named (all when None); ValueError names the known ones."""
    every = all_candidates()
    if names is None:
        return every
    known = {c.name: c for c in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown int8 candidates {unknown}; known: {sorted(known)}")
    return tuple(known[n] for n in names)


@dataclass
class Int8Attempt:
    candidate: Int8Candidate
    metrics: dict[str, Any]
    passed: bool
    quantized_nodes: dict[str, int] = field(default_factory=dict)
    seq_per_s: float | None = None  # measured after every candidate was scored

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.candidate.method,
            "settings": asdict(self.candidate.settings),
            "metrics": self.metrics,
            "passed": self.passed,
            "quantized_nodes": self.quantized_nodes,
            "seq_per_s": self.seq_per_s,
        }


def build(
    candidate: Int8Candidate,
    src: Path,
    dst: Path,
    work_dir: Path,
    calibration: Sequence[dict[str, np.ndarray]],
) -> dict[str, int]:
    if isinstance(candidate.settings, quantize_static.StaticSettings):
        return quantize_static.quantize_static_int8(
            src, dst, candidate.settings, calibration, work_dir
        )
    return quantize.quantize_int8(src, dst, candidate.settings)


def measure_speeds(
    paths: Sequence[Path], threads: int | None, rounds: int = 3, runs_per_round: int = 3
) -> list[float]:
    """Sequences/s of each model (geometric mean over SPEED_SHAPES). Rounds go over every model
    in turn and each keeps its best round, so load from other work on the machine hits all
    models alike rather than whichever was measured at a busy moment."""
    sessions = [make_session(p, threads, spinning=False) for p in paths]
    rng = np.random.default_rng(0)
    best = [[math.inf] * len(SPEED_SHAPES) for _ in paths]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            for j, (batch, tokens) in enumerate(SPEED_SHAPES):
                feeds = _synthetic_feeds(input_names(session), batch, tokens, rng)
                session.run(None, feeds)  # warm-up for this shape
                started = time.perf_counter()
                for _ in range(runs_per_round):
                    session.run(None, feeds)
                elapsed = (time.perf_counter() - started) / runs_per_round
                best[i][j] = min(best[i][j], elapsed)
    return [
        math.exp(np.mean([math.log(b / t) for (b, _), t in zip(SPEED_SHAPES, times, strict=True)]))
        for times in best
    ]


def _synthetic_feeds(
    names: Sequence[str], batch: int, tokens: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    arrays = {
        "input_ids": rng.integers(1000, 2000, size=(batch, tokens), dtype=np.int64),
        "attention_mask": np.ones((batch, tokens), dtype=np.int64),
        "token_type_ids": np.zeros((batch, tokens), dtype=np.int64),
    }
    return {n: arrays[n] for n in names}


def choose_int8(
    src: Path,
    dst: Path,
    work_dir: Path,
    candidates: Sequence[Int8Candidate],
    calibration: Sequence[dict[str, np.ndarray]],
    evaluate: Callable[[Path], dict[str, Any]],
    accept: Callable[[dict[str, Any]], bool],
    speeds: Callable[[Sequence[Path]], list[float]],
) -> tuple[Int8Attempt | None, list[Int8Attempt], float | None]:
    """Build, score and time every candidate; move the fastest accepted one to `dst`.

    Every candidate is timed, in the gate or not, so the record shows what the gate cost.
    Returns (chosen attempt or None, every attempt, fp32 `src` sequences/s; None when no
    candidate quantised anything). Candidates that quantise nothing in this graph are skipped."""
    attempts: list[tuple[Int8Attempt, Path]] = []
    for i, candidate in enumerate(candidates):
        path = work_dir / f"int8-candidate-{i}.onnx"
        counts = build(candidate, src, path, work_dir, calibration)
        if not counts:
            logger.info("int8 candidate %s quantises nothing in this graph", candidate.name)
            path.unlink(missing_ok=True)
            continue
        metrics = evaluate(path)
        attempt = Int8Attempt(candidate, metrics, accept(metrics), counts)
        attempts.append((attempt, path))
        logger.info("int8 candidate %s: %s -> %s", candidate.name, metrics, attempt.passed)
    if not attempts:
        return None, [], None
    fp32_rate, *rates = speeds([src, *(path for _, path in attempts)])
    for (attempt, _), rate in zip(attempts, rates, strict=True):
        attempt.seq_per_s = rate
    passing = [(a, p) for a, p in attempts if a.passed]
    chosen = max(passing, key=lambda ap: ap[0].seq_per_s or 0.0, default=None)
    if chosen is not None:
        chosen[1].replace(dst)
    for _, path in attempts:
        path.unlink(missing_ok=True)
    return (chosen[0] if chosen else None), [a for a, _ in attempts], fp32_rate


def batch_composition_diff(
    logits_fn: Callable[[Any], np.ndarray], tokenizer: Any, texts: Sequence[Any]
) -> float:
    """Largest change of any text's logits between running it alone and in mixed-length batches
    of varying size (export.text_inputs.varied_batches): 0 up to float rounding when activation
    scales are static; dynamic scales move with the batch's extremes."""
    alone = np.concatenate([logits_fn(encode(tokenizer, [t])) for t in texts])
    mixed = np.concatenate([logits_fn(encode(tokenizer, b)) for b in varied_batches(texts)])
    return float(np.abs(alone - mixed).max())


def attempts_table(attempts: list[dict[str, Any]], speed: dict[str, Any] | None) -> list[str]:
    """Markdown: every int8 setting the exporter tried (manifest attempts), with its gate
    metrics, sequences/s and the speed-up over fp32."""
    fp32 = (speed or {}).get("fp32_seq_per_s")
    shapes = ", ".join(f"B{b} T{t}" for b, t in (speed or {}).get("shapes", SPEED_SHAPES))
    lines = [
        f"int8 settings tried by the exporter (speed: geometric mean over {shapes}, every "
        "setting timed; batch diff: largest logit change of a text alone vs in mixed batches"
        + (f"; fp32 {fp32:.1f} seq/s" if fp32 else "")
        + "):",
        "",
        "| setting | method | quantised nodes | agreement | accuracy drop (points) "
        "| batch diff | in gate | seq/s | x fp32 |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for a in attempts:
        m = a["metrics"]
        drop = m.get("accuracy_drop_points")
        rate = a.get("seq_per_s")
        batch_diff = m.get("batch_composition_max_abs_diff")  # absent in older manifests
        nodes = ", ".join(f"{k} {v}" for k, v in a.get("quantized_nodes", {}).items())
        lines.append(
            f"| {a['settings']['name']} | {a.get('method', 'dynamic')} | {nodes} "
            f"| {m['label_agreement']:.4f} | {'n/a' if drop is None else f'{drop:.2f}'} "
            f"| {'n/a' if batch_diff is None else f'{batch_diff:.1e}'} "
            f"| {'yes' if a['passed'] else 'no'} | {f'{rate:.1f}' if rate else '-'} "
            f"| {f'{rate / fp32:.2f}x' if rate and fp32 else '-'} |"
        )
    return [*lines, ""]
