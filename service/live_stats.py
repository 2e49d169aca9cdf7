"""Live per-model numbers for the playground (`GET /v1/stats`), computed from the service's own
Prometheus metrics the way a dashboard would: rates and quantiles over a sliding window.

Each call reads the cumulative counters and histograms, keeps the reading, and compares it with
the newest reading at least `window_s` old (or the first one, taken when the app was built), so
polling once a second gives the last `window_s` seconds without a background task.

A translator decoded step by step (service/decode_scheduler.py) has no batches of the batcher's
kind: its batch size is the decoder rows per step (`nlpserve_decode_running_sequences`), and
padding efficiency (real / padded tokens of a batcher's run) does not apply, since its
sequences join and leave one running batch instead of being padded into batches: null, with
`scheduling: "step"` saying why.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.metrics import MetricWrapperBase

DEFAULT_WINDOW_S = 10.0  # long enough to smooth 1 Hz polling, short enough to follow a load test


@dataclass
class Histo:
    """A cumulative histogram summed over the labels other than `model`."""

    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    count: float = 0.0
    total: float = 0.0

    def minus(self, before: Histo) -> Histo:
        return Histo(
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.count - before.count,
            self.total - before.total,
        )

    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket; the largest finite bound
        when the quantile falls in +Inf."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        finite = [le for le in sorted(self.buckets) if math.isfinite(le)]
        for le in finite:
            cumulative = self.buckets[le]
            if cumulative >= rank:
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, cumulative
        return finite[-1] if finite else None


Reading = dict[str, dict[str, Histo]]  # metric -> model -> histogram


class SummarisedDecodeMetrics(Protocol):
    """The step scheduler's histogram summarised here (`service.decode_metrics.DecodeMetrics`)."""

    @property
    def running(self) -> MetricWrapperBase: ...


class SummarisedMetrics(Protocol):
    """The histograms of `service.metrics.ServiceMetrics` summarised here (a protocol, so the
    metrics module can own a LiveStats without an import cycle)."""

    @property
    def request_seconds(self) -> MetricWrapperBase: ...

    @property
    def batch_size(self) -> MetricWrapperBase: ...

    @property
    def padding_efficiency(self) -> MetricWrapperBase: ...

    @property
    def queue_wait(self) -> MetricWrapperBase: ...

    @property
    def inference_seconds(self) -> MetricWrapperBase: ...

    @property
    def decode(self) -> SummarisedDecodeMetrics: ...


def _read(metric: MetricWrapperBase, models: dict[str, Histo]) -> None:
    for family in metric.collect():
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if not model:
                continue  # requests that never named a model (404s, /metrics, the page)
            histo = models.setdefault(model, Histo())
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                histo.buckets[le] = histo.buckets.get(le, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                histo.count += sample.value
            elif sample.name.endswith("_sum"):
                histo.total += sample.value


class LiveStats:
    def __init__(
        self,
        metrics: SummarisedMetrics,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._window_s = window_s
        self._clock = clock
        self._readings: deque[tuple[float, Reading]] = deque([(clock(), {})])

    def _reading(self) -> Reading:
        m = self._metrics
        reading: Reading = {}
        for name, metric in (
            ("latency", m.request_seconds),
            ("batch_size", m.batch_size),
            ("padding", m.padding_efficiency),
            ("queue_wait", m.queue_wait),
            ("engine", m.inference_seconds),
            ("decode_rows", m.decode.running),
        ):
            _read(metric, reading.setdefault(name, {}))
        return reading

    def summary(
        self, queue_depths: Iterable[tuple[str, int]], step_scheduled: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Per model (those in `queue_depths` and those with requests in the window); the
        models named in `step_scheduled` are translators decoded step by step."""
        now, current = self._clock(), self._reading()
        while len(self._readings) > 1 and self._readings[1][0] <= now - self._window_s:
            self._readings.popleft()  # the newest reading that is still a full window old stays
        since, before = self._readings[0]
        self._readings.append((now, current))
        elapsed = max(now - since, 1e-9)

        def delta(name: str, model: str) -> Histo:
            empty = Histo()
            return (
                current.get(name, {})
                .get(model, empty)
                .minus(before.get(name, {}).get(model, empty))
            )

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 2)

        depths = dict(queue_depths)
        stepped = set(step_scheduled)
        names = sorted(set(depths) | set(current.get("latency", {})))
        models = []
        for model in names:
            latency, batch = delta("latency", model), delta("batch_size", model)
            padding, wait = delta("padding", model), delta("queue_wait", model)
            mean_batch, mean_padding = batch.mean(), padding.mean()
            if model in stepped:  # rows per decode step; nothing is padded to batch
                mean_batch, mean_padding = delta("decode_rows", model).mean(), None
            models.append(
                {
                    "model": model,
                    "scheduling": "step" if model in stepped else "request",
                    "requests_per_s": round(latency.count / elapsed, 3),
                    "sequences_per_s": round(batch.total / elapsed, 3),
                    "latency_p50_ms": ms(latency.quantile(0.5)),
                    "latency_p95_ms": ms(latency.quantile(0.95)),
                    "queue_depth": depths.get(model, 0),
                    "queue_wait_p95_ms": ms(wait.quantile(0.95)),
                    "batch_size_mean": None if mean_batch is None else round(mean_batch, 2),
                    "padding_efficiency_mean": (
                        None if mean_padding is None else round(mean_padding, 3)
                    ),
                    "engine_ms_mean": ms(delta("engine", model).mean()),
                }
            )
        return {"window_s": round(elapsed, 3), "models": models}
