"""service/lane_routing.py: which lane takes a request; with a tail lane, long texts go to a
lighter lane of their own.

The router alone, on loads given to it; then a closed loop of fake lanes in which the tail
lane must end up holding the long texts and fewer rows; then DecodeLanes over fake schedulers
with the tail lane on, and its restart fallback.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

from service.decode_lanes import DecodeLanes
from service.lane_routing import (
    LONG_QUANTILE,
    MIN_RECENT_SOURCES,
    SPILL_ROWS,
    TAIL_LANE_BUSY_ROWS,
    TAIL_SHARE_FOR_LONG,
    TAIL_SHARE_FOR_SHORT,
    LaneRouter,
    RecentLengths,
)
from tests.test_decode_lanes import fake_lanes
from tests.test_decode_scheduler import GREEDY, src, unleash


def test_recent_lengths_keep_a_window_and_its_quantiles() -> None:
    recent = RecentLengths(size=4)
    for length in [10, 1, 7, 3]:
        recent.add(length)
    assert [recent.quantile(q) for q in (0.25, 0.5, 0.75, 1.0)] == [1, 3, 7, 10]
    recent.add(2)  # the 10 leaves the window
    assert len(recent) == 4 and recent.quantile(1.0) == 7 and recent.quantile(0.25) == 1
    recent.add(7)  # one of two equal lengths leaves, the other stays
    recent.add(20)
    assert recent.quantile(1.0) == 20 and recent.quantile(0.5) == 3


def seen(router: LaneRouter, lengths: list[int]) -> None:
    """`router` has seen requests of these source lengths (onto empty lanes)."""
    for length in lengths:
        router.choose([0, 0], rows=1, source_tokens=length, streamed=False, tail=0)


def test_without_a_tail_lane_or_history_the_least_loaded_lane_takes_it() -> None:
    plain = LaneRouter(tail_lane=False)
    seen(plain, [10] * 100)
    assert plain.choose([5, 3], rows=1, source_tokens=50, streamed=False, tail=0) == 1
    assert plain.choose([2, 3], rows=1, source_tokens=1, streamed=False, tail=0) == 0

    fresh = LaneRouter(tail_lane=True)
    seen(fresh, [10] * (MIN_RECENT_SOURCES - 1))
    assert fresh.is_long(50) is None
    assert fresh.choose([5, 3], rows=1, source_tokens=50, streamed=False, tail=0) == 1
    assert fresh.is_long(50) is True  # that one made MIN_RECENT_SOURCES


def test_long_texts_go_to_the_tail_lane_short_ones_keep_out_of_it() -> None:
    router = LaneRouter(tail_lane=True)
    seen(router, list(range(1, 101)))  # the 70th percentile is 70
    assert LONG_QUANTILE == 0.7 and router.recent.quantile(LONG_QUANTILE) == 70
    assert router.is_long(71) and not router.is_long(70)

    def lane(tokens: int, loads: list[int], tail: int | None = 0) -> int:
        chosen = router.choose(loads, rows=1, source_tokens=tokens, streamed=False, tail=tail)
        router.recent.add(70)  # keep the window's quantile where it is
        return chosen

    # a long text: the tail lane while it holds at most TAIL_SHARE_FOR_LONG of the lightest
    # other lane's rows, even when it is not the least loaded lane
    assert TAIL_SHARE_FOR_LONG == 0.8
    assert lane(90, [8, 10]) == 0 and lane(90, [9, 10]) == 1
    assert lane(90, [8, 12, 10]) == 0 and lane(90, [9, 12, 10]) == 2
    # a short one: elsewhere, unless the tail lane holds less than TAIL_SHARE_FOR_SHORT of them
    assert TAIL_SHARE_FOR_SHORT == 0.35
    assert lane(20, [6, 20]) == 0 and lane(20, [7, 20]) == 1
    assert lane(20, [6, 30, 20]) == 0 and lane(20, [7, 30, 20]) == 2
    # lanes that are not busy (fewer than TAIL_LANE_BUSY_ROWS rows each on average): the least
    # loaded lane, a tie to the first
    assert TAIL_LANE_BUSY_ROWS == 8
    assert lane(20, [0, 0]) == 0 and lane(20, [2, 13]) == 0 and lane(90, [10, 5]) == 1
    # the tail lane restarting (not among the lanes taking work): the least loaded one
    assert lane(90, [17, 13], tail=None) == 1


def test_streams_fill_a_lane_first_even_with_a_tail_lane() -> None:
    router = LaneRouter(tail_lane=True)
    seen(router, list(range(1, 101)))
    assert router.choose([0, 0], rows=1, source_tokens=5, streamed=True, tail=0) == 0
    assert router.choose([SPILL_ROWS - 1, 0], 1, 5, streamed=True, tail=0) == 0
    assert router.choose([SPILL_ROWS, 0], 1, 5, streamed=True, tail=0) == 1


def test_in_a_closed_loop_the_tail_lane_holds_the_long_texts_and_fewer_rows() -> None:
    """32 users over two fake lanes whose sequences take as many steps as their source has
    tokens, a lane's step taking 1 + rows/5 time units: with the tail lane the long texts
    (above the 70th percentile) sit in lane 0, which holds fewer rows than lane 1, and the
    longest texts' latency falls; without it both lanes hold the same mix."""

    def loop(tail_lane: bool) -> tuple[list[float], list[float], float]:
        rng = random.Random(7)
        router = LaneRouter(tail_lane)
        lanes: list[list[list[float]]] = [[], []]  # per lane: [steps left, length, started]
        clock = [0.0, 0.0]  # each lane's own time: they run side by side
        rows: list[list[int]] = [[], []]
        long_share: list[list[bool]] = [[], []]
        latencies: list[tuple[int, float]] = []

        def arrive(now: float) -> None:
            length = max(2, int(rng.gauss(16, 6)))
            index = router.choose([len(lane) for lane in lanes], 1, length, False, tail=0)
            long = router.is_long(length)
            if long is not None:
                long_share[index].append(long)
            lanes[index].append([length, length, now])

        for _ in range(32):
            arrive(0.0)
        for _ in range(6000):
            index = 0 if clock[0] <= clock[1] else 1  # the lane whose step ends first
            lane = lanes[index]
            rows[index].append(len(lane))
            clock[index] += 1 + len(lane) / 5
            for sequence in list(lane):
                sequence[0] -= 1
                if sequence[0] == 0:
                    lane.remove(sequence)
                    latencies.append((int(sequence[1]), clock[index] - sequence[2]))
                    arrive(clock[index])  # its user sends the next one
        mean_rows = [sum(r) / len(r) for r in rows]
        longest = sorted(latencies)[-len(latencies) // 20 :]  # the 5% longest texts
        long_shares = [sum(s) / len(s) for s in long_share]
        return mean_rows, long_shares, sum(t for _, t in longest) / len(longest)

    tail_rows, tail_long_shares, tail_longest = loop(tail_lane=True)
    plain_rows, plain_long_shares, plain_longest = loop(tail_lane=False)
    assert tail_long_shares[0] > 0.6 and tail_long_shares[1] < 0.15
    assert tail_rows[0] < 0.9 * tail_rows[1]
    assert abs(plain_long_shares[0] - plain_long_shares[1]) < 0.1
    assert abs(plain_rows[0] - plain_rows[1]) < 1
    assert tail_longest < 0.95 * plain_longest


class Restarting:
    """A lane as DecodeLanes sees a process lane while its process restarts: takes no work."""

    available = False

    def __init__(self, lane: Any) -> None:
        self.lane = lane

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lane, name)


def test_decode_lanes_route_through_the_tail_lane_and_around_it_while_it_restarts() -> None:
    async def main() -> None:
        lanes, runners, _ = fake_lanes(2, tail_lane=True)
        assert isinstance(lanes, DecodeLanes) and lanes.router.tail_lane
        for runner in runners:
            runner.permits = threading.Semaphore(0)
        lanes.start()
        items = []
        for _ in range(2 * TAIL_LANE_BUSY_ROWS):  # before MIN_RECENT_SOURCES: least loaded
            items += lanes.submit([src(5, tokens=3)], key=GREEDY, timeout_s=10)
        for _ in range(MIN_RECENT_SOURCES):
            lanes.router.recent.add(4)
        loads = []
        for tokens in [3, 3, 9]:  # short, short, long (3 tokens are short, 9 long)
            items += lanes.submit([src(5, tokens=tokens)], key=GREEDY, timeout_s=10)
            loads.append([lane.waiting_rows for lane in lanes.lanes])
        assert loads == [[8, 9], [8, 10], [9, 10]]
        tail = lanes.lanes[0]
        lanes.lanes[0] = Restarting(tail)
        items += lanes.submit([src(5, tokens=9)], key=GREEDY, timeout_s=10)
        lanes.lanes[0] = tail
        assert [lane.waiting_rows for lane in lanes.lanes] == [9, 11]
        for runner in runners:
            unleash(runner)
        assert await asyncio.gather(*(i.future for i in items)) == ["7 7 7 7 7"] * 20
        await lanes.stop(5)

    asyncio.run(main())
