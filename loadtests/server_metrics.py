"""Read nlpserve's batching counters from /metrics, to say what a load-test run made it do.

Two scrapes around a run give deltas: engine runs, sequences, padded tokens, engine seconds.
From them: the mean batch size the batcher formed and how busy the engine was.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# (histogram, sample suffix) -> BatchCounters field
_SAMPLES = {
    ("nlpserve_batch_size", "_count"): "runs",
    ("nlpserve_batch_size", "_sum"): "sequences",
    ("nlpserve_batch_tokens", "_sum"): "padded_tokens",
    ("nlpserve_inference_seconds", "_sum"): "engine_seconds",
}


@dataclass(frozen=True)
class BatchCounters:
    runs: float = 0.0  # engine runs (batches)
    sequences: float = 0.0
    padded_tokens: float = 0.0
    engine_seconds: float = 0.0  # time inside engine runs

    def __sub__(self, before: BatchCounters) -> BatchCounters:
        return BatchCounters(
            self.runs - before.runs,
            self.sequences - before.sequences,
            self.padded_tokens - before.padded_tokens,
            self.engine_seconds - before.engine_seconds,
        )

    @property
    def mean_batch_size(self) -> float | None:
        return self.sequences / self.runs if self.runs else None

    @property
    def engine_sequences_per_s(self) -> float | None:
        """Sequences per second of engine time: the engine's own rate on these batches."""
        return self.sequences / self.engine_seconds if self.engine_seconds else None


def parse_batch_counters(text: str, model: str) -> BatchCounters:
    """The model's batching counters from a Prometheus text exposition."""
    values = dict.fromkeys(_SAMPLES.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            for (name, suffix), field in _SAMPLES.items():
                if sample.name == name + suffix:
                    values[field] = sample.value
    return BatchCounters(**values)


def scrape_batch_counters(host: str, model: str, timeout_s: float = 5.0) -> BatchCounters:
    with urllib.request.urlopen(host.rstrip("/") + "/metrics", timeout=timeout_s) as response:
        return parse_batch_counters(response.read().decode("utf-8"), model)
