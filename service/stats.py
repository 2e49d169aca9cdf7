"""Triton's statistics extension: per model version, request counts and cumulative nanoseconds.

Two observers fill one `ModelStatistics`, neither inside the batcher's loop:
- the batcher's `BatchObserver` hook (`on_run`): engine executions, inferences (sequences run)
  and `batch_stats` by batch size (only `compute_infer`: tokenisation and result assembly happen
  per request, outside the batch, so a batch's `compute_input`/`compute_output` are zero);
- the inference path (`record`): per request, success or fail with its whole duration, and the
  time it spent tokenising (`compute_input`), queued (`queue`), in the engine (`compute_infer`) and
  assembling its result (`compute_output`).

`as_json` is the Open Inference Protocol / Triton statistics JSON (what `tritonclient.http`'s
`get_inference_statistics` returns); the gRPC service parses the same dict into its protobuf.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.batcher import BatchObserver, RunStats

NS = 1_000_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * NS))

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class RequestTiming:
    """The phases of one request, in seconds, as the inference path measures them."""

    started: float = field(default_factory=time.monotonic)
    compute_input: float = 0.0
    queue: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent in the `with` block to phase `name` (compute_input/output)."""
        begun = time.monotonic()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.monotonic() - begun)

    def engine(self, enqueued: float, run_started: float, finished: float) -> None:
        """The queue and engine share of a request whose sequences were queued at `enqueued`,
        the last of them started running at `run_started`, and all were done at `finished`."""
        self.queue += max(0.0, run_started - enqueued)
        self.compute_infer += max(0.0, finished - run_started)


class ModelStatistics(BatchObserver):
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0  # sequences that ran (Triton: inferences, batch items)
        self.execution_count = 0  # engine runs
        self.last_inference_ms = 0  # wall-clock ms since the epoch (Triton's field), 0: never
        self._batches: dict[int, Duration] = {}

    # ------------------------------------------------------------------ BatchObserver

    def on_run(self, stats: RunStats) -> None:
        self.execution_count += 1
        if not stats.failed:
            self.inference_count += stats.size
        self._batches.setdefault(stats.size, Duration()).add(stats.run_seconds)
        self.last_inference_ms = int(time.time() * 1000)  # a timestamp, not an interval

    def on_dropped(self, reason: str, count: int) -> None:
        pass  # the requests concerned are counted as failures by `record`

    # ------------------------------------------------------------------ the inference path

    def record(self, timing: RequestTiming, ok: bool) -> None:
        (self.success if ok else self.fail).add(time.monotonic() - timing.started)
        if not ok:
            return
        self.compute_input.add(timing.compute_input)
        self.queue.add(timing.queue)
        self.compute_infer.add(timing.compute_infer)
        self.compute_output.add(timing.compute_output)

    # ------------------------------------------------------------------ the protocol's form

    def as_json(self) -> dict[str, Any]:
        zero = Duration().as_json()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": self.compute_input.as_json(),
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": self.compute_output.as_json(),
                "cache_hit": zero,  # no response cache
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_json(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self._batches.items())
            ],
        }


class FanOut(BatchObserver):
    """Several observers of one batcher (Prometheus metrics and the statistics extension)."""

    def __init__(self, *observers: BatchObserver) -> None:
        self._observers = observers

    def on_run(self, stats: RunStats) -> None:
        for observer in self._observers:
            observer.on_run(stats)

    def on_dropped(self, reason: str, count: int) -> None:
        for observer in self._observers:
            observer.on_dropped(reason, count)
