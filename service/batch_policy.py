"""What a batch may hold and how it is cut: the batching policy, apart from the queue and loop
that apply it (service/batcher.py), so each rule can be read and tested on its own.

- `BatchPolicy`: one model's limits, from its config.json with the service-wide overrides;
- `next_batch`: the items (FIFO, one key) the next batch takes, and whether it is full;
- `split_runs` (service/engines/runs.py, shared with the decode batch's joiners): where to cut
  a length-sorted batch into runs;
- `oldest_first`: the order the runs start in;
- `runs_alone`: whether a batch takes every slot and thread (not under load).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from service.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUE_DELAY_MS,
)
from service.repository import ModelConfig
from service.settings import Settings


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_queue_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_MS / 1000  # window after the first item
    max_queue_size: int = 1024  # queued sequences; beyond it submit() answers OVERLOADED
    run_overhead_tokens: int = 16  # fixed cost of one engine run, in padded-token equivalents
    max_concurrent_runs: int = 1  # engine runs in flight at once (one per engine worker thread)
    regroup_wait_s: float = 0.0  # a batch smaller than the last run waits this long past its end

    @classmethod
    def for_model(cls, config: ModelConfig, settings: Settings) -> BatchPolicy:
        """The model's batching config with the service-wide overrides applied."""
        b = config.batching
        delay_ms = settings.max_queue_delay_ms
        return cls(
            max_batch_size=settings.max_batch_size or b.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens or b.max_batch_tokens,
            max_queue_delay_s=(b.max_queue_delay_ms if delay_ms is None else delay_ms) / 1000,
            max_queue_size=settings.max_queue_size,
            run_overhead_tokens=settings.run_overhead_tokens,
            max_concurrent_runs=settings.workers_per_model,
            regroup_wait_s=settings.regroup_wait_ms / 1000,
        )


class Queued(Protocol):
    """What the policy reads of a queued item."""

    @property
    def key(self) -> Hashable: ...

    @property
    def tokens(self) -> int: ...


Q = TypeVar("Q", bound=Queued)


def next_batch(queue: Iterable[Q], key: Hashable, policy: BatchPolicy) -> tuple[list[Q], bool]:
    """The items (FIFO, same key) the next batch would hold, and whether it is full: it holds
    `max_batch_size` items, or the next item would push its padded size (items x longest item)
    over `max_batch_tokens`."""
    batch: list[Q] = []
    longest = 0
    for item in queue:
        if item.key != key:
            continue
        padded = (len(batch) + 1) * max(longest, item.tokens)
        if batch and padded > policy.max_batch_tokens:
            return batch, True
        batch.append(item)
        longest = max(longest, item.tokens)
        if len(batch) >= policy.max_batch_size:
            return batch, True
    return batch, False


def oldest_first(runs: list[tuple[int, int]], arrivals: Sequence[float]) -> list[tuple[int, int]]:
    """`runs` in the order to start them: the run holding the earliest arrival first (ascending
    length among ties). Shortest first would put a long text that already waited through the
    previous batch behind every shorter run of its own batch as well."""
    return sorted(runs, key=lambda run: min(arrivals[run[0] : run[1]]))


def runs_alone(runs: int, runs_in_flight: bool, queued: bool, queued_at_last_end: bool) -> bool:
    """Whether a batch cut into `runs` runs takes every engine slot and all the engine's threads
    (with an engine that can run alone): one run, no other in flight, nothing queued now or when
    the last run ended, i.e. the server is not under load."""
    return runs == 1 and not runs_in_flight and not queued and not queued_at_last_end
