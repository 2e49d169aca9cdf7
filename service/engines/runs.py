"""Where to cut a length-sorted set of sequences into engine runs: each run pads only to its own
longest sequence, and each costs a fixed overhead, so a cut pays when it saves more padding than
that. Used by the batcher (service/batch_policy.py) and by the decode batch's joiners; it lives
with the engines because the peers' venvs load the engines without the service's settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def split_runs(lengths: Sequence[int], overhead_tokens: int) -> list[tuple[int, int]]:
    """Cut ascending `lengths` into runs [start, end) minimising padded tokens + per-run overhead.

    A run pads to its last (longest) sequence, so it costs `(end - start) * lengths[end - 1] +
    overhead_tokens`. Exact dynamic programme over the positions where the length changes
    (cutting between equal lengths never helps), so O(distinct lengths^2).
    """
    n = len(lengths)
    if n == 0:
        return []
    ends = [i + 1 for i in range(n) if i + 1 == n or lengths[i + 1] != lengths[i]]
    starts = [0, *ends[:-1]]  # candidate run starts; starts[j] is where run j would begin
    best = [0.0] + [math.inf] * len(ends)  # best[j]: cost of covering [0, starts[j] or ends[j-1])
    back = [0] * (len(ends) + 1)
    for j, end in enumerate(ends, start=1):
        for i in range(j):  # run from starts[i] to end
            cost = best[i] + (end - starts[i]) * lengths[end - 1] + overhead_tokens
            if cost < best[j]:
                best[j], back[j] = cost, i
    runs = []
    j = len(ends)
    while j > 0:
        i = back[j]
        runs.append((starts[i], ends[j - 1]))
        j = i
    return runs[::-1]
