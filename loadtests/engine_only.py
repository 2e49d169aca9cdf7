"""Engine-only throughput: nlpserve's own classifier engine, no HTTP, no queue, no batcher.

The serving benchmark's ceiling: the same model version, ONNX Runtime settings and texts as the
server, fed batches of the size the batcher actually formed under load (nlpserve's
nlpserve_batch_size counts engine runs, after it splits a length-sorted batch into runs of
similar length). Each batch is a random window of the texts sorted by token count, so it is
padded about as little as a run can be: a ceiling, not a replay.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from service.engines.classifier import ClassifierEngine
from service.engines.session import SessionSettings
from service.repository import read_model


@dataclass(frozen=True)
class EngineRate:
    batch_size: int
    sequences_per_s: float
    batches: int  # how many runs the rate was measured over


def engine_only_rates(
    model_dir: Path,
    version: int,
    texts: list[str],
    batch_sizes: list[int],
    settings: SessionSettings,
    seconds_per_size: float = 3.0,
    seed: int = 0,
) -> list[EngineRate]:
    """Sequences/s of the engine at each batch size (tokenisation excluded, as in the server's
    nlpserve_inference_seconds)."""
    engine = ClassifierEngine(read_model(model_dir, version), settings)
    engine.warmup(max(batch_sizes))
    encoded = sorted(engine.encoder.encode(texts), key=lambda e: e.tokens)
    rng = random.Random(seed)
    rates = []
    for size in batch_sizes:
        batches = sequences = 0
        busy = 0.0
        while busy < seconds_per_size or batches < 3:
            first = rng.randrange(max(1, len(encoded) - size + 1))
            batch = encoded[first : first + size]
            started = time.perf_counter()
            engine.run(batch)
            busy += time.perf_counter() - started
            batches += 1
            sequences += len(batch)
        rates.append(EngineRate(size, sequences / busy, batches))
    return rates
