"""The step scheduler's running batch split into lanes whose decoder steps run side by side.

One decoder run per step over every row leaves a CPU's other cores idle: ONNX Runtime's
intra-op threads do not pay on a decoder step below ~64 rows (2 threads: 6.75 ms for 32 rows vs
6.09 ms on one, real translator, reports/translation-benchmark.md), because each of its small
MatMuls ends at a barrier. N independent one-thread runs over N shares of the rows have no
barrier between them: measured on the 2-vCPU dev VM (real translator, cache 24 and source 16
positions, median of 40), one 32-row run 6.7-7.4 ms vs two 16-row runs side by side 4.8-4.9 ms;
64 rows 14.1-14.2 vs 8.0 ms.

Each lane is a `DecodeBatch` of its own (its own caches, free rows and compaction), so a
sequence decodes to the same ids in any lane, alone or beside others (`DecodeBatch`'s
guarantee). A sequence stays in the lane it joined; joiners go to the lane with the fewest rows
(the step waits for its slowest lane). The scheduler's thread steps the last lane itself, the
others run on a pool of N - 1 threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from service.engines.decode_batch import DecodeBatch
from service.engines.decode_io import EncodedRun, Join, Outcome


class DecodeLanes:
    """`DecodeBatch`'s interface (StepEngine) over several lanes; one thread calls `step`."""

    def __init__(self, lanes: Sequence[DecodeBatch], name: str = "translator") -> None:
        if len(lanes) < 2:
            raise ValueError("lanes need at least two running batches; use a DecodeBatch")
        self.lanes = list(lanes)
        self._lane_of: dict[int, int] = {}  # seq_id -> its lane
        self._pool = ThreadPoolExecutor(len(lanes) - 1, thread_name_prefix=f"lane-{name}")

    @property
    def rows(self) -> int:
        return sum(lane.rows for lane in self.lanes)

    @property
    def cache_tokens(self) -> int:
        return sum(lane.cache_tokens for lane in self.lanes)

    def encode(self, joins: Sequence[Join]) -> list[EncodedRun]:
        """As `DecodeBatch.encode` (it reads only the encoder session: any lane's will do)."""
        return self.lanes[0].encode(joins)

    def reset(self) -> None:
        for lane in self.lanes:
            lane.reset()
        self._lane_of.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def step(
        self, joins: Sequence[Join], leaves: Iterable[int], encoded: Sequence[EncodedRun] = ()
    ) -> list[Outcome]:
        """One step of every lane with work, side by side; outcomes lane after lane."""
        lane_leaves: list[list[int]] = [[] for _ in self.lanes]
        load = [lane.rows for lane in self.lanes]
        for seq_id in leaves:
            index = self._lane_of.pop(seq_id, None)
            if index is None:
                continue
            lane_leaves[index].append(seq_id)
            seq = self.lanes[index].sequences.get(seq_id)
            load[index] -= seq.beams if seq is not None else 0
        lane_encoded = self._place_encoded(encoded, load)
        lane_joins: list[list[Join]] = [[] for _ in self.lanes]
        for join in joins:
            index = self._place(join.seq_id, join.beam_size, load)
            lane_joins[index].append(join)
        busy = [
            i
            for i, lane in enumerate(self.lanes)
            if lane.sequences or lane_leaves[i] or lane_joins[i] or lane_encoded[i]
        ]
        if not busy:
            return []
        *others, mine = busy
        futures: list[Future[list[Outcome]]] = [
            self._pool.submit(self.lanes[i].step, lane_joins[i], lane_leaves[i], lane_encoded[i])
            for i in others
        ]
        results: dict[int, list[Outcome]] = {}
        error: BaseException | None = None
        try:
            results[mine] = self.lanes[mine].step(
                lane_joins[mine], lane_leaves[mine], lane_encoded[mine]
            )
        except BaseException as caught:  # wait for the other lanes before raising
            error = caught
        for i, future in zip(others, futures, strict=True):
            try:
                results[i] = future.result()
            except BaseException as caught:
                error = error or caught
        if error is not None:
            raise error
        outcomes = [outcome for i in busy for outcome in results[i]]
        for outcome in outcomes:
            if outcome.result is not None:
                self._lane_of.pop(outcome.seq_id, None)
        return outcomes

    def _place(self, seq_id: int, rows: int, load: list[int]) -> int:
        """The lane with the fewest rows takes the sequence (ties: the first)."""
        index = min(range(len(load)), key=load.__getitem__)
        load[index] += rows
        self._lane_of[seq_id] = index
        return index

    def _place_encoded(
        self, encoded: Sequence[EncodedRun], load: list[int]
    ) -> list[list[EncodedRun]]:
        """Each joiner of the runs encoded beforehand to the lane with the fewest rows; a run
        whose joiners go to several lanes is split (`EncodedRun.without`)."""
        lane_runs: list[list[EncodedRun]] = [[] for _ in self.lanes]
        for run in encoded:
            lanes = [self._place(j.seq_id, j.beam_size, load) for j in run.joins]
            for index in sorted(set(lanes)):
                others = {
                    j.seq_id for j, lane in zip(run.joins, lanes, strict=True) if lane != index
                }
                part = run.without(others)
                if part is not None:
                    lane_runs[index].append(part)
        return lane_runs
