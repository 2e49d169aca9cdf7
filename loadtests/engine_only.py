"""Engine-only throughput: nlpserve's own classifier engine, no HTTP, no queue, no batcher.

The serving benchmark's ceiling: the same model version, ONNX Runtime settings and texts as the
server, fed batches of the size the batcher actually formed under load (nlpserve's
nlpserve_batch_size counts engine runs, after it splits a length-sorted batch into runs of
similar length). Each batch is a random window of the texts sorted by token count, so it is
padded about as little as a run can be: a ceiling, not a replay.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.engines.classifier import ClassifierEngine
from service.engines.session import SessionSettings
from service.engines.tokenization import Encoded
from service.repository import read_model


@dataclass(frozen=True)
class EngineRate:
    batch_size: int
    sequences_per_s: float
    batches: int  # how many runs the rate was measured over
    side_by_side: int = 1  # runs in flight at once (one-thread runs when > 1)


def engine_only_rates(
    model_dir: Path,
    version: int,
    texts: list[str],
    batch_sizes: list[int],
    settings: SessionSettings,
    seconds_per_size: float = 3.0,
    seed: int = 0,
    side_by_side: int = 1,
) -> list[EngineRate]:
    """Sequences/s of the engine at each batch size (tokenisation excluded, as in the server's
    nlpserve_inference_seconds). With `side_by_side` > 1 (a server that puts one-thread runs
    side by side under load, service/batcher.py) the rate is the better of one run at a time on
    every thread and `side_by_side` one-thread runs at once: the server may do either."""
    engine = ClassifierEngine(
        read_model(model_dir, version), settings, single_thread_runs=side_by_side > 1
    )
    engine.warmup(max(batch_sizes))
    encoded = sorted(engine.encoder.encode(texts), key=lambda e: e.tokens)
    rates = []
    for size in batch_sizes:
        rate = _rate(engine.run, encoded, size, seconds_per_size, seed, 1)
        if engine.single_thread_session is not None:
            beside = _rate(
                engine.run_single_thread, encoded, size, seconds_per_size, seed, side_by_side
            )
            rate = max(rate, beside, key=lambda r: r.sequences_per_s)
        rates.append(rate)
    return rates


def _rate(
    run: Callable[[list[Encoded]], object],
    encoded: list[Encoded],
    size: int,
    seconds: float,
    seed: int,
    threads: int,
) -> EngineRate:
    """`threads` loops at once, each running random batches of `size` for `seconds` (at least
    3 runs each)."""
    batches: list[int] = []  # runs done by each loop

    def loop(index: int) -> None:
        rng = random.Random(seed + index)
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline or done < 3:
            first = rng.randrange(max(1, len(encoded) - size + 1))
            run(encoded[first : first + size])
            done += 1
        batches.append(done)  # list.append is atomic

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    runs = sum(batches)
    return EngineRate(size, runs * min(size, len(encoded)) / wall, runs, threads)
