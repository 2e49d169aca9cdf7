"""Prometheus metrics. The service owns one `ServiceMetrics` (its own registry, so several apps
in one process do not collide); batchers are observed from outside through `BatchObserver`s and
queue depth / readiness are read at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.batcher import RunStats
from service.decode_metrics import DecodeMetrics, DecodeStepMetrics
from service.live_stats import LiveStats

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ModelView(Protocol):
    """What the scrape-time collector reads from each served model."""

    name: str

    @property
    def ready(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    def lane_process_ids(self) -> list[tuple[int, int]]: ...


class _ModelsCollector(Collector):
    def __init__(self, models: Callable[[], Iterable[ModelView]]) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "nlpserve_queue_depth", "Sequences waiting in the model's queue", labels=["model"]
        )
        ready = GaugeMetricFamily(
            "nlpserve_model_ready", "1 when the model serves", labels=["model"]
        )
        # process_* describes the server's own process; a translator's lanes in processes of
        # their own hold most of its CPU and a copy of its sessions each (service/decode_process.py)
        lane_cpu = CounterMetricFamily(
            "nlpserve_lane_process_cpu_seconds",
            "User and system CPU time of a translator's lane process (it restarts from 0 with "
            "a new process)",
            labels=["model", "lane"],
        )
        lane_memory = GaugeMetricFamily(
            "nlpserve_lane_process_resident_memory_bytes",
            "Resident memory of a translator's lane process",
            labels=["model", "lane"],
        )
        for model in self._models():
            depth.add_metric([model.name], model.queue_depth)
            ready.add_metric([model.name], 1.0 if model.ready else 0.0)
            for lane, pid in model.lane_process_ids():
                usage = process_usage(pid)
                if usage is not None:
                    lane_cpu.add_metric([model.name, str(lane)], usage[0])
                    lane_memory.add_metric([model.name, str(lane)], usage[1])
        yield depth
        yield ready
        yield lane_cpu
        yield lane_memory


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process from Linux's /proc, as prometheus_client's
    ProcessCollector reads its own; None if it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after the command name, which may hold spaces
    cpu_s = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return cpu_s, int(fields[21]) * _PAGE_BYTES  # rss in pages


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_* (CPU seconds, resident memory, open fds) and python_info, as the global
        # registry would have them; this registry is per app so tests can build several apps.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.request_seconds = Histogram(
            "nlpserve_request_duration_seconds",
            "HTTP request latency",
            ["route", "model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "nlpserve_rejected_requests",
            "Inference requests answered with an error, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.dropped = Counter(
            "nlpserve_dropped_sequences",
            "Queued sequences that never ran: cancelled (client gone), timeout, shutdown",
            ["model", "reason"],
            registry=r,
        )
        self.truncated = Counter(
            "nlpserve_truncated_inputs",
            "Inputs cut to the model's max_length",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "nlpserve_queue_wait_seconds",
            "Time a sequence waited before its batch ran",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nlpserve_batch_size",
            "Sequences per engine run",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "nlpserve_batch_tokens",
            "Padded tokens per engine run (sequences x longest)",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_efficiency = Histogram(
            "nlpserve_padding_efficiency_ratio",
            "Real tokens / padded tokens per engine run",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "nlpserve_inference_seconds",
            "Engine run time (tokenized batch in, results out)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.failed_runs = Counter(
            "nlpserve_failed_runs", "Engine runs that raised", ["model"], registry=r
        )
        self.runs_alone = Counter(
            "nlpserve_runs_alone",
            "Engine runs that had the engine to themselves and used every thread (the others, "
            "under load, ran side by side on one thread each)",
            ["model"],
            registry=r,
        )
        self.tokenization_seconds = Histogram(
            "nlpserve_tokenization_seconds",
            "Time to tokenize one request's inputs",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nlpserve_tokens",
            "Tokens of accepted inputs after truncation (exported as nlpserve_tokens_total)",
            ["model"],
            registry=r,
        )

        self.decode = DecodeMetrics(r)
        self.live = LiveStats(self)

    def watch_models(self, models: Callable[[], Iterable[ModelView]]) -> None:
        self.registry.register(_ModelsCollector(models))

    def batch_observer(self, model: str) -> BatchMetrics:
        return BatchMetrics(self, model)

    def decode_observer(self, model: str) -> DecodeStepMetrics:
        return self.decode.observer(model)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class BatchMetrics:
    """A `BatchObserver` recording one model's runs."""

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self._m = metrics
        self._model = model

    def on_run(self, stats: RunStats) -> None:
        m, model = self._m, self._model
        m.batch_size.labels(model).observe(stats.size)
        m.batch_tokens.labels(model).observe(stats.padded_tokens)
        m.padding_efficiency.labels(model).observe(stats.real_tokens / max(1, stats.padded_tokens))
        m.inference_seconds.labels(model).observe(stats.run_seconds)
        wait = m.queue_wait.labels(model)
        for seconds in stats.queue_waits:
            wait.observe(seconds)
        if stats.failed:
            m.failed_runs.labels(model).inc()
        if stats.alone:
            m.runs_alone.labels(model).inc()

    def on_dropped(self, reason: str, count: int) -> None:
        self._m.dropped.labels(self._model, reason).inc(count)
