"""Which lane of a step-scheduled translator takes a request (service/decode_lanes.py).

In a step loop a sequence's latency grows with its length: every step costs it the whole
lane's step, and a long translation takes many. Under load the tail of the latency
distribution is therefore the long texts, and a lane's step costs more the more rows it holds
(about 0.2 ms per row on the 2-vCPU dev VM). With a *tail lane*, the first lane takes the long
texts and is kept lighter than the others, so its steps are shorter and the long texts finish
sooner; the short ones, whose latency is a few steps, pay for it with slightly longer steps
elsewhere. The total work is the same.

How long a text is, is known before it decodes: the source's token count predicts the
translation's (Multi30k validation, the recipe's translator: correlation 0.91). "Long" is
relative to what this server has been sent: above the LONG_QUANTILE of the last
RECENT_SOURCES requests' sources.

Measured at 32 users on the recipe's translator, alternated against least-loaded routing
(reports/translation-benchmark.md, stop 40): with every 8th text four sentences long, the long
texts' p95 fell 10-11% (377 against 420 ms, 389 against 439) and the overall p99 9-10%, at the
same requests/s; with single sentences the effect was inside this VM's noise (p95 -7%, -5%, +8%
in three runs).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

# A lane takes new streamed sequences until it holds this many rows before the next lane gets
# any: at low load one lane leaves a core to the HTTP side, and a streamed sequence's first piece
# comes sooner (8 streaming users over HTTP, real translator, two alternated rounds: first piece
# p50 12.4 / 12.1 ms with one lane, 15.2 / 15.4 ms with the sequences spread over two); above it
# the lanes share the load (32 users: 228-252 req/s in two lanes, 175-207 in one). Whole answers
# spread from the first request: the answer is the whole decode, which the second core shortens
# (8 users, four alternated rounds, runs/s27: 117-143 req/s spread, against request-level
# batching with two engine runs in flight 105-127; filling one lane first had served 126-156
# against that baseline's 138-192).
SPILL_ROWS = 8

# The tail lane. A source longer than LONG_QUANTILE of the last RECENT_SOURCES is long (none is
# before MIN_RECENT_SOURCES were seen). A long one goes to the tail lane while that lane holds at
# most TAIL_SHARE_FOR_LONG of the rows of the lightest other lane, a short one only while it
# holds less than TAIL_SHARE_FOR_SHORT of them: between the two shares the tail lane fills with
# long texts only. The values come from a closed-loop simulation of two lanes (step = 2.5 ms +
# 0.2 ms per row, 32 users, the validation set's lengths; reports/translation-benchmark.md, stop
# 40): p95 8% and p99 15% shorter than least-loaded routing for 3% fewer requests/s; over HTTP
# the throughput held.
# The rule applies only while the lanes hold TAIL_LANE_BUSY_ROWS rows each on average: a step's
# cost grows with its rows only past a few (about 0.2 ms a row from 5 rows on), and below that a
# lighter tail lane only leaves its core idle (8 users, stop 40: 0.94x the requests/s of
# least-loaded routing with the rule always on, same p95).
TAIL_LANE_BUSY_ROWS = 8
LONG_QUANTILE = 0.7
RECENT_SOURCES = 256
MIN_RECENT_SOURCES = 32
TAIL_SHARE_FOR_LONG = 0.8
TAIL_SHARE_FOR_SHORT = 0.35


class RecentLengths:
    """The source lengths of the last `size` requests, kept sorted for their quantiles."""

    def __init__(self, size: int = RECENT_SOURCES) -> None:
        self._order: deque[int] = deque()
        self._sorted: list[int] = []
        self._size = size

    def __len__(self) -> int:
        return len(self._order)

    def add(self, length: int) -> None:
        if len(self._order) == self._size:
            oldest = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._order.append(length)
        bisect.insort(self._sorted, length)

    def quantile(self, share: float) -> int:
        """The smallest length at least `share` of the recent ones do not exceed."""
        if not self._sorted:
            raise ValueError("no lengths yet")
        return self._sorted[max(0, math.ceil(share * len(self._sorted)) - 1)]


class LaneRouter:
    """Chooses a lane for each request from the lanes' loads (rows running and waiting):
    streams fill a lane to SPILL_ROWS first; otherwise the least loaded lane, or with
    `tail_lane` and busy lanes the tail-lane rule above."""

    def __init__(self, tail_lane: bool) -> None:
        self.tail_lane = tail_lane
        self.recent = RecentLengths()

    def is_long(self, source_tokens: int) -> bool | None:
        """Whether a source is long for this server (None: too few seen to say)."""
        if len(self.recent) < MIN_RECENT_SOURCES:
            return None
        return source_tokens > self.recent.quantile(LONG_QUANTILE)

    def choose(
        self,
        loads: Sequence[int],
        rows: int,
        source_tokens: int,
        streamed: bool,
        tail: int | None,
    ) -> int:
        """The index in `loads` of the lane for a request of `rows` decoder rows whose longest
        source has `source_tokens` tokens; `tail`: the tail lane's index in `loads` (None when
        it takes no work now)."""
        long = self.is_long(source_tokens)
        self.recent.add(source_tokens)
        fill = SPILL_ROWS if streamed else 0
        spill = [i for i, load in enumerate(loads) if load + rows <= fill]
        if spill:
            return spill[0]
        least = min(range(len(loads)), key=loads.__getitem__)
        if (
            not self.tail_lane
            or tail is None
            or long is None
            or len(loads) < 2
            or sum(loads) < TAIL_LANE_BUSY_ROWS * len(loads)
        ):
            return least
        others = [i for i in range(len(loads)) if i != tail]
        lightest = min(others, key=loads.__getitem__)
        if long:
            takes = loads[tail] <= TAIL_SHARE_FOR_LONG * loads[lightest]
        else:
            takes = loads[tail] < TAIL_SHARE_FOR_SHORT * loads[lightest]
        return tail if takes else lightest
