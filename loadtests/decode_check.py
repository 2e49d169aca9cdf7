"""Checks of the step scheduler's decoding on a real exported translator (numbers for
reports/translation-benchmark.md).

    python -m loadtests.decode_check identity \
        --version-dir runs/demo/model_repository/translator/1 \
        --sentences ../shared/data/multi30k/val.en --limit 200
    python -m loadtests.decode_check layouts --version-dir runs/demo/model_repository/translator/1
    python -m loadtests.decode_check step-cost --version-dir runs/demo/model_repository/translator/1

identity: every sentence decoded through a shared `DecodeBatch` (sentences joining at seeded
random steps, several per step, greedy, beam 4, and both mixed) against the same sentence decoded
alone with `OnnxGenerator.generate`; prints the number of sentences whose token ids differ.

step-cost: time of one decoder step at 1 to 64 rows (cache and source 16 positions) and the
line through them, fixed ms per step + ms per row: what bounds step scheduling's gain on a CPU.

layouts: time of one decoder step for B rows whose caches have different lengths, under three
ways of batching the cache: left-padded with a mask (one run, padded to the longest cache; what
`DecodeBatch` does), grouped by cache length (one run per distinct length, no mask needed), and
preallocated to the maximum length (one run over every column).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.engines.decode_batch import DecodeBatch
from service.engines.decode_io import EncodedRun, Join
from service.engines.generation import DecoderState, OnnxGenerator
from service.engines.session import SessionSettings


def identity(
    generator: OnnxGenerator,
    sources: Sequence[list[int]],
    max_new_tokens: int,
    seed: int,
    encode_ahead: bool = False,
) -> dict[str, Any]:
    """With `encode_ahead`, the joiners of each step are encoded on a second thread while the
    batch takes that step and join at the next, as the scheduler does by default."""
    report: dict[str, Any] = {
        "sentences": len(sources),
        "max_new_tokens": max_new_tokens,
        "encode_ahead": encode_ahead,
    }
    encoder = ThreadPoolExecutor(1)
    rng = random.Random(seed)
    for name, beams in {"greedy": [1], "beam4": [4], "mixed": [1, 4]}.items():
        joins = [Join(i, s, rng.choice(beams), max_new_tokens) for i, s in enumerate(sources)]
        arrivals: dict[int, list[Join]] = {}
        step = 0
        for join in joins:  # 0 to 3 sentences join per step, in order
            step += rng.choice([0, 0, 1, 2])
            arrivals.setdefault(step, []).append(join)
        batch = DecodeBatch(generator)
        results: dict[int, list[int]] = {}
        rows: list[int] = []
        t0 = time.perf_counter()
        step = 0
        pending: Future[list[EncodedRun]] | None = None
        while len(results) < len(joins):
            encoded = pending.result() if pending is not None else []
            now = arrivals.get(step, [])
            pending = None
            if encode_ahead and now and batch.rows:
                pending, now = encoder.submit(batch.encode, now), []
            for outcome in batch.step(now, [], encoded):
                if outcome.result is not None:
                    results[outcome.seq_id] = outcome.result
            rows.append(batch.rows)
            step += 1
        shared_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = [generator.generate([j.src_ids], j.beam_size, max_new_tokens)[0] for j in joins]
        alone_s = time.perf_counter() - t0
        report[name] = {
            "differences": sum(results[j.seq_id] != a for j, a in zip(joins, alone, strict=True)),
            "steps": step,
            "mean_rows_per_step": round(statistics.fmean(rows), 1),
            "max_rows": max(rows),
            "shared_seconds": round(shared_s, 2),
            "alone_seconds": round(alone_s, 2),
        }
    encoder.shutdown()
    return report


def random_state(
    generator: OnnxGenerator, rows: int, cache: int, source: int, rng: np.random.Generator
) -> DecoderState:
    """A decoder state of `rows` rows with `cache` self-attention columns and `source` encoder
    positions, filled with noise (a step's cost does not depend on the values)."""
    meta = generator.decoder.get_modelmeta().custom_metadata_map
    L, H, hd = (int(meta[k]) for k in ("num_layers", "num_heads", "head_dim"))
    return DecoderState(
        memory_mask=np.ones((rows, source), bool),
        cross_k=rng.standard_normal((L, rows, H, source, hd), dtype=np.float32),
        cross_v=rng.standard_normal((L, rows, H, source, hd), dtype=np.float32),
        self_k=rng.standard_normal((L, rows, H, cache, hd), dtype=np.float32),
        self_v=rng.standard_normal((L, rows, H, cache, hd), dtype=np.float32),
        position=np.full(rows, cache, np.int64),
    )


def median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def step_cost(
    generator: OnnxGenerator, rows: Sequence[int], cache: int, source: int, repeats: int
) -> dict[str, Any]:
    """ms per decoder step at each row count (cache and source lengths fixed), and the
    least-squares line through them: fixed ms per step + ms per row (the scheduler's cost
    model in reports/translation-benchmark.md)."""
    rng = np.random.default_rng(0)
    points = []
    for n in rows:
        state = random_state(generator, n, cache, source, rng)
        tokens = np.full(n, 5, np.int64)
        ms = median_ms(lambda s=state, t=tokens: generator.step(s, t), repeats)
        points.append({"rows": n, "step_ms": ms, "ms_per_row": round(ms / n, 3)})
    fixed, per_row = _line([p["rows"] for p in points], [p["step_ms"] for p in points])
    line = {"fixed_ms": fixed, "row_ms": per_row}
    return {"cache": cache, "source": source, "points": points, **line}


def _line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return round(float(intercept), 3), round(float(slope), 3)


def layouts(
    generator: OnnxGenerator,
    rows: int,
    distinct: int,
    max_len: int,
    source: int,
    repeats: int,
    preallocated: int = 128,
) -> dict[str, Any]:
    """ms per decoder step for `rows` rows whose caches hold `distinct` different lengths
    spread over 1..max_len-1 (the preallocated cache has `preallocated` columns: the
    max_new_tokens default of an export)."""
    rng = np.random.default_rng(0)
    lengths = np.repeat(np.linspace(1, max_len - 1, distinct).astype(int), rows // distinct)
    B = lengths.size

    def state(n: int, t: int) -> DecoderState:
        return random_state(generator, n, t, source, rng)

    def mixed(columns: int) -> DecoderState:
        """B rows at `lengths` positions in a `columns`-column cache (each row's own columns
        as the decoder's layout has them: the step reads the positions)."""
        mixed_state = state(B, columns)
        mixed_state.position = lengths.astype(np.int64)
        return mixed_state

    tokens = np.full(B, 5, np.int64)
    padded, full = mixed(int(lengths.max())), mixed(preallocated)
    groups = [(state(int((lengths == t).sum()), int(t)), int(t)) for t in np.unique(lengths)]

    def run_padded() -> None:
        generator.step(padded, tokens)

    def run_full() -> None:
        generator.step(full, tokens)

    def run_groups() -> None:
        for s, _ in groups:
            generator.step(s, tokens[: s.position.size])

    out: dict[str, Any] = {
        "rows": B,
        "distinct_lengths": distinct,
        "longest_cache": int(lengths.max()),
        "preallocated_columns": preallocated,
    }
    for name, fn in {
        "left_padded_mask": run_padded,
        "grouped_by_length": run_groups,
        "preallocated_max": run_full,
    }.items():
        out[name + "_ms"] = round(median_ms(fn, repeats), 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=["identity", "layouts", "step-cost"])
    parser.add_argument("--version-dir", type=Path, required=True)
    parser.add_argument("--sentences", type=Path, help="identity: one source per line")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--encode-ahead", action="store_true", help="identity: encode joiners beside the step"
    )
    args = parser.parse_args(argv)
    settings = SessionSettings(providers="cpu", intra_op_threads=args.threads, allow_spinning=False)
    generator = OnnxGenerator.from_directory(args.version_dir, settings)
    if args.check == "identity":
        if args.sentences is None:
            parser.error("identity needs --sentences")
        tokenizer = Tokenizer.from_file(str(args.version_dir / "tokenizer.json"))
        lines = args.sentences.read_text().splitlines()[: args.limit]
        sources = [e.ids for e in tokenizer.encode_batch(lines)]
        report = identity(generator, sources, args.max_new_tokens, args.seed, args.encode_ahead)
    elif args.check == "step-cost":
        report = step_cost(generator, (1, 2, 4, 8, 16, 32, 64), cache=16, source=16, repeats=50)
    else:
        report = {
            "layouts": [
                layouts(generator, rows, distinct, 32, 16, repeats=50)
                for rows, distinct in ((32, 4), (32, 16), (64, 32))
            ]
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
