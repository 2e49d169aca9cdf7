"""Prometheus metrics of the translation step scheduler (observed from outside, per step)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.decode_items import StepStats

STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
JOIN_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)


class DecodeMetrics:
    """The scheduler's metric families in the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.running = Histogram(
            "nlpserve_decode_running_sequences",
            "Decoder rows (sequences x beams) that ran in a step; sum/count is the mean",
            ["model"],
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.joins = Histogram(
            "nlpserve_decode_joins_per_step",
            "Sequences that joined the running batch at a step boundary",
            ["model"],
            buckets=JOIN_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "nlpserve_decode_step_seconds",
            "Time of one decoding step (joiners' encoder + one decoder step for every row)",
            ["model"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.cache_tokens = Gauge(
            "nlpserve_decode_cache_tokens",
            "Padded cache positions the running batch may reach (the max_cache_tokens budget)",
            ["model"],
            registry=r,
        )
        self.finished = Counter(
            "nlpserve_decode_finished_sequences",
            "Sequences decoded to the end and answered",
            ["model"],
            registry=r,
        )
        self.dropped = Counter(
            "nlpserve_decode_dropped_sequences",
            "Sequences that left unanswered: cancelled (client gone), timeout, shutdown, lost "
            "(their lane's process died)",
            ["model", "reason"],
            registry=r,
        )

    def observer(self, model: str) -> DecodeStepMetrics:
        return DecodeStepMetrics(self, model)


class DecodeStepMetrics:
    """A `DecodeObserver` recording one model's steps."""

    def __init__(self, metrics: DecodeMetrics, model: str) -> None:
        self._m = metrics
        self._model = model
        # Children bound once: `labels()` (a lock and a dict lookup each) five times a step was
        # ~9% of the decode thread's time holding the GIL (py-spy --gil, 8 streaming users).
        self._running = metrics.running.labels(model)
        self._joins = metrics.joins.labels(model)
        self._step_seconds = metrics.step_seconds.labels(model)
        self._cache_tokens = metrics.cache_tokens.labels(model)
        self._finished = metrics.finished.labels(model)

    def on_step(self, stats: StepStats) -> None:
        self._running.observe(stats.rows)
        self._joins.observe(stats.joined)
        self._step_seconds.observe(stats.seconds)
        self._cache_tokens.set(stats.cache_tokens)
        if stats.finished:
            self._finished.inc(stats.finished)

    def on_dropped(self, reason: str, count: int) -> None:
        self._m.dropped.labels(self._model, reason).inc(count)
