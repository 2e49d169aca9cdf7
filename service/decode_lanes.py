"""A step-scheduled translator's decoding split into lanes: independent step loops side by side.

One decoder run per step over every row leaves a CPU's other cores idle: ONNX Runtime's
intra-op threads do not pay on a decoder step below ~64 rows (2 threads: 6.75 ms for 32 rows vs
6.09 ms on one, real translator, reports/translation-benchmark.md), because each of its small
MatMuls ends at a barrier. N one-thread runs over N shares of the rows have no barrier between
them (2-vCPU dev VM, real translator, cache 24 and source 16 positions, median of 40: one
32-row run 6.7-7.4 ms, two 16-row runs side by side 4.8-4.9 ms).

Each lane is a whole `DecodeScheduler` (its own waiting queue, running batch and step loop
thread) with a 1/N share of the model's budgets. Which lane takes a request is
service/lane_routing.py's: the least loaded, a stream first filling one lane at low load, and
with a tail lane the long texts kept in a lighter lane of their own.
The lanes do not wait for each other: a first version stepped them in lockstep (one step =
every lane's step, the slowest deciding), and at 32 users in process it served 220 / 230 req/s
against 244 / 256 for independent loops (two alternated rounds), its threads idling at the
barrier while one lane encoded its joiners. A sequence decodes to the same ids in any lane,
alone or beside others (`DecodeBatch`'s guarantee).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import Protocol

from service.decode_items import DecodeItem, DecodeObserver, StepStats
from service.decode_policy import DecodePolicy
from service.decode_process import ProcessLane
from service.decode_scheduler import DecodeScheduler
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams
from service.lane_routing import LaneRouter


def lane_policy(policy: DecodePolicy, lanes: int) -> DecodePolicy:
    """One lane's share of a model's budgets (rows, cache tokens, queue places)."""
    return replace(
        policy,
        max_running_sequences=math.ceil(policy.max_running_sequences / lanes),
        max_cache_tokens=math.ceil(policy.max_cache_tokens / lanes),
        max_queue_size=math.ceil(policy.max_queue_size / lanes),
    )


class Lane(Protocol):
    """What DecodeLanes needs of a lane: a `DecodeScheduler`, or one in a process of its own
    (`ProcessLane`, service/decode_process.py)."""

    @property
    def queue_depth(self) -> int: ...

    @property
    def rows(self) -> int: ...

    @property
    def waiting_rows(self) -> int: ...

    @property
    def encodes_ahead(self) -> bool: ...

    @property
    def available(self) -> bool: ...

    def start(self) -> None: ...

    async def until_ready(self) -> None: ...

    def submit(
        self,
        payloads: Sequence[Encoded],
        tokens: Sequence[int] | None = None,
        *,
        key: Hashable,
        timeout_s: float,
        on_token: Callable[[int], None] | None = None,
    ) -> list[DecodeItem]: ...

    def predicted_wait_s(self, rows: int = 0) -> float | None: ...

    def retry_after_s(self, extra: int = 0) -> int: ...

    async def stop(self, timeout_s: float | None = None) -> None: ...


class DecodeLanes:
    """`DecodeScheduler`'s interface over several lanes of one model."""

    def __init__(self, lanes: Sequence[Lane], tail_lane: bool = False) -> None:
        if not lanes:
            raise ValueError("no lanes")
        self.lanes = list(lanes)
        self.router = LaneRouter(tail_lane)  # the first lane is the tail lane

    @property
    def queue_depth(self) -> int:
        return sum(lane.queue_depth for lane in self.lanes)

    @property
    def rows(self) -> int:
        return sum(lane.rows for lane in self.lanes)

    @property
    def encodes_ahead(self) -> bool:
        return self.lanes[0].encodes_ahead

    @property
    def available(self) -> bool:
        return any(lane.available for lane in self.lanes)

    def lane_process_ids(self) -> list[tuple[int, int]]:
        """(lane index, pid) of the lanes that run in processes of their own, as they are now."""
        return [
            (i, pid)
            for i, lane in enumerate(self.lanes)
            if isinstance(lane, ProcessLane) and (pid := lane.pid) is not None
        ]

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    async def until_ready(self) -> None:
        await asyncio.gather(*(lane.until_ready() for lane in self.lanes))

    def submit(
        self,
        payloads: Sequence[Encoded],
        tokens: Sequence[int] | None = None,
        *,
        key: Hashable,
        timeout_s: float,
        on_token: Callable[[int], None] | None = None,
    ) -> list[DecodeItem]:
        """Into the lane the router chooses (service/lane_routing.py) among the lanes that take
        work (a lane whose process is restarting does not)."""
        if not isinstance(key, DecodingParams):
            raise TypeError(f"the decoding parameters are the key, not {key!r}")
        lanes = [lane for lane in self.lanes if lane.available] or self.lanes[:1]  # it refuses
        index = self.router.choose(
            [lane.rows + lane.waiting_rows for lane in lanes],
            rows=key.beam_size * len(payloads),
            source_tokens=max((p.tokens for p in payloads), default=0),
            streamed=on_token is not None,
            tail=0 if lanes[0] is self.lanes[0] else None,
        )
        return lanes[index].submit(
            payloads, tokens, key=key, timeout_s=timeout_s, on_token=on_token
        )

    def predicted_wait_s(self, rows: int = 0) -> float | None:
        waits = [w for w in (lane.predicted_wait_s(rows) for lane in self.lanes) if w is not None]
        return min(waits) if waits else None

    def retry_after_s(self, extra: int = 0) -> int:
        return min(lane.retry_after_s(extra) for lane in self.lanes)

    async def stop(self, timeout_s: float | None = None) -> None:
        await asyncio.gather(*(lane.stop(timeout_s) for lane in self.lanes))


class LaneObservers:
    """One observer per lane onto a model's observer: steps and drops pass through; the cache
    gauge, a level, is the sum of every lane's last value instead of the last lane's."""

    def __init__(self, observer: DecodeObserver, lanes: int) -> None:
        self._observer = observer
        self._cache = [0] * lanes

    def lane(self, index: int) -> DecodeObserver:
        return _LaneObserver(self, index)

    def on_step(self, index: int, stats: StepStats) -> None:
        self._cache[index] = stats.cache_tokens  # one writer per index: its lane's thread
        self._observer.on_step(replace(stats, cache_tokens=sum(self._cache)))

    def on_dropped(self, reason: str, count: int) -> None:
        self._observer.on_dropped(reason, count)


class _LaneObserver:
    def __init__(self, owner: LaneObservers, index: int) -> None:
        self._owner = owner
        self._index = index

    def on_step(self, stats: StepStats) -> None:
        self._owner.on_step(self._index, stats)

    def on_dropped(self, reason: str, count: int) -> None:
        self._owner.on_dropped(reason, count)


def scheduler_for(
    lanes: int,
    make: Callable[[DecodePolicy, DecodeObserver, int], Lane],
    policy: DecodePolicy,
    observer: DecodeObserver,
    tail_lane: bool = False,
) -> DecodeScheduler | DecodeLanes:
    """One scheduler, or `lanes` of them behind DecodeLanes (the first a tail lane with
    `tail_lane`, service/lane_routing.py); `make(policy, observer, index)` builds one."""
    if lanes < 2:
        lane = make(policy, observer, 0)
        return lane if isinstance(lane, DecodeScheduler) else DecodeLanes([lane])
    observers = LaneObservers(observer, lanes)
    share = lane_policy(policy, lanes)
    return DecodeLanes([make(share, observers.lane(i), i) for i in range(lanes)], tail_lane)
