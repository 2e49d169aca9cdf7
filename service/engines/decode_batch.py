"""The running decode batch of the step scheduler: tensors only (the mechanism; who joins and
leaves is `service.decode_scheduler`'s policy).

Sequences at different steps share one decoder run. The batch axis holds slots (rows):

- a sequence holds `beam_size` rows (greedy: one), anywhere in the batch;
- self-attention cache [L, B, H, T, hd], T = the longest cache among the rows, laid out as the
  decoder's kind says (service.engines.translator_graphs): a row that has decoded t positions keeps
  them in its first t columns (group_query: the graph writes the new one at column t and reads
  t + 1 columns) or its last t (masked: the graph appends at column T and `self_mask` hides the
  columns before them). Either way the graph's output is the next step's input as it is;
- cross-attention keys/values [L, B, H, S, hd] and memory_mask [B, S], S = the longest source
  plus MASKED_TAIL_COLUMNS, right-padded like a padded batch (every row keeps a masked column, so
  its bits do not depend on its batch mates: service.engines.generation);
- the live rows are the first `live` slots, and only they run: when a sequence leaves, the last
  live rows move into its rows (one row's copy each) and the slots after `live` are spare; a
  joiner is written into spare slots in place (its source keys/values and mask; whatever its
  self-attention columns hold is masked or unread), so a step where one sequence leaves and
  another joins copies two rows, not the batch. The arrays grow with spare slots to come
  (service/engines/batch_arrays.py), and source or cache columns no live row needs are cut off.

Why this layout (measured, reports/translation-benchmark.md): one decoder run per step whatever
the mix of steps, where grouping rows by cache length needs one run per distinct length, and a
cache preallocated to the maximum length attends over (and copies) every column at every step.
The group_query kind attends over each row's own columns only (stop 29 in the report).
Rebuilding the batch arrays at every join and leave (the first version) spent more time copying
than decoding under a closed loop of 32 users; free rows left in place until a quarter of the
batch was free (the second) ran in every step and grew and compacted the arrays as joiners
gathered (stop 35 in the report).

A column outside a row's own gets exactly zero attention weight (masked) or is not read
(group_query), so every rule of the search (argmax; beam
ranking, frozen finished beams, the best beam as answer) is `service.engines.generation`'s and a
sequence decodes to the same ids as it does alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.engines import batch_arrays
from service.engines.cache_binding import StepBinding, with_room
from service.engines.decode_io import EncodedRun, Join, Outcome
from service.engines.generation import (
    MASKED_TAIL_COLUMNS,
    DecoderState,
    OnnxGenerator,
    _log_softmax,
)
from service.engines.runs import split_runs


@dataclass(eq=False)
class _Sequence:
    seq_id: int
    beams: int
    src_len: int
    max_steps: int
    steps: int = 0  # positions decoded = cached self-attention columns of each of its rows
    greedy_ids: list[int] = field(default_factory=list)
    scores: np.ndarray | None = None  # beam search: (K,) float32
    lengths: np.ndarray | None = None  # (K,) int64, generated tokens incl. <eos>
    finished: np.ndarray | None = None  # (K,) bool
    history: np.ndarray | None = None  # (K, steps) int64
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # its batch rows


@dataclass
class _Layout:
    greedy: list[_Sequence]  # greedy sequences, in the order of `greedy_rows`
    greedy_rows: np.ndarray  # their rows
    beam_groups: list[list[_Sequence]]  # beam sequences, one list per beam size


TRIM_SLACK_COLUMNS = 8  # cut unneeded source or cache columns once this many (amortised copy)
JOIN_RUN_OVERHEAD_TOKENS = 16  # an encoder run's fixed cost in padded tokens (measured ~19)


class DecodeBatch:
    """Not thread-safe: one thread (the scheduler's) calls `step` at a time."""

    def __init__(self, generator: OnnxGenerator, length_penalty: float = 1.0) -> None:
        if not generator.mixed_steps:
            raise ValueError(
                "decoder.onnx cannot decode rows at different steps (exported before step "
                "scheduling); re-export the translator to decode step by step"
            )
        self.generator = generator
        self.length_penalty = length_penalty
        self.reset()

    def reset(self) -> None:
        """Forget every sequence (also after a failed step, whose state cannot be trusted)."""
        self.sequences: dict[int, _Sequence] = {}
        self.state: DecoderState | None = None  # every slot; the first `live` run
        self.live = 0
        self.tokens = np.zeros(0, np.int64)  # next input token per slot
        self.owner: list[int | None] = []  # seq_id of each slot; None: spare
        self.src_len = np.zeros(0, np.int64)  # source tokens of each slot (0: spare)
        self._layout: _Layout | None = None  # derived from membership; None after any change
        # the decoder binding kept while the batch runs (it holds the session and the batch's
        # arrays: dropped when the batch empties, so a released session is not kept alive)
        self._binding: StepBinding | None = None

    # ------------------------------------------------------------------ views

    @property
    def rows(self) -> int:
        """Rows of live sequences: the first `rows` slots."""
        return self.live

    @property
    def slots(self) -> int:
        """Slots in the arrays, spare ones included."""
        return len(self.owner)

    @property
    def cache_tokens(self) -> int:
        """Padded positions the caches hold: slots x (source columns + self-attention columns)."""
        if self.state is None:
            return 0
        return self.slots * (self.state.cross_k.shape[3] + self.state.self_k.shape[3])

    # ------------------------------------------------------------------ the step

    def step(
        self,
        joins: Sequence[Join],
        leaves: Iterable[int],
        encoded: Sequence[EncodedRun] = (),
    ) -> list[Outcome]:
        """Free the rows of `leaves` (seq ids), write `joins` into spare slots (their encoder
        runs once, batched) and the joiners `encoded` beforehand, run one decoder step for every
        live row, advance every search; finished sequences leave at once."""
        self._free(set(leaves))
        runs = [*encoded, *(self.encode(joins) if joins else ())]
        if runs:  # the joiners encoded beforehand came first
            earlier = sorted(j.seq_id for run in encoded for j in run.joins)  # ids count arrivals
            self._join(runs, [*earlier, *(j.seq_id for j in joins)])
        if not self.sequences:
            self.reset()
            return []
        self._cut_source_columns()
        assert self.state is not None
        layout = self._current_layout()
        live = self.live
        if self.generator.left_aligned:  # room for this step's writes, in the batch's arrays
            self.state.self_k, self.state.self_v = with_room(
                self.state.self_k, self.state.self_v, self.state.position[:live]
            )
        if self._binding is None:
            self._binding = self.generator.step_binding()
        # position: each row's decoded positions = its cached columns
        logits, stepped = self.generator.step(
            batch_arrays.prefix(self.state, live), self.tokens[:live], self._binding
        )
        eos = self.generator.eos_id
        next_tokens = np.full(live, eos, np.int64)
        outcomes: list[Outcome] = []
        done: set[int] = set()
        if layout.greedy:
            chosen = logits.argmax(-1)[layout.greedy_rows]  # not a copy of their logits
            next_tokens[layout.greedy_rows] = chosen
            for seq, token in zip(layout.greedy, chosen.tolist(), strict=True):
                seq.steps += 1
                seq.greedy_ids.append(token)
                if token == eos or seq.steps >= seq.max_steps:
                    outcomes.append(Outcome(seq.seq_id, token, seq.greedy_ids))
                    done.add(seq.seq_id)
                else:
                    outcomes.append(Outcome(seq.seq_id, token, None))
        order = None
        if layout.beam_groups:
            order = np.arange(live)  # beam reordering of the rows (within sequences)
            for group in layout.beam_groups:
                self._advance_beams(group, logits, next_tokens, order, outcomes, done)
            if (order == np.arange(live)).all():
                order = None
        self._store(stepped, order)
        self.tokens[:live] = next_tokens
        self._free(done)
        if not self.sequences:
            self.reset()
        self._trim_columns()
        return outcomes

    def _store(self, stepped: DecoderState, order: np.ndarray | None) -> None:
        """Keep what the step returned for the live rows (reordered by the beams' `order`)."""
        assert self.state is not None
        state, live = self.state, self.live
        if self.generator.left_aligned:  # the step wrote the caches in place
            state.position[:live] = stepped.position
            if order is not None:
                state.self_k[:, :live] = state.self_k[:, order]
                state.self_v[:, :live] = state.self_v[:, order]
            return
        # masked: the step returned grown caches of the live rows; the spare slots go
        self_k, self_v = stepped.self_k, stepped.self_v
        if order is not None:
            self_k, self_v = self_k[:, order], self_v[:, order]
        self.state = DecoderState(
            memory_mask=np.ascontiguousarray(state.memory_mask[:live]),
            cross_k=np.ascontiguousarray(state.cross_k[:, :live]),
            cross_v=np.ascontiguousarray(state.cross_v[:, :live]),
            self_k=self_k,
            self_v=self_v,
            position=stepped.position,
        )
        self.tokens, self.src_len = self.tokens[:live], self.src_len[:live]
        del self.owner[live:]

    def _current_layout(self) -> _Layout:
        """Who holds which rows, recomputed only after a join or leave (a step with none reuses
        it: per-step Python bookkeeping is what a one-row step pays beside ORT)."""
        if self._layout is None:
            greedy = [s for s in self.sequences.values() if s.beams == 1]
            sizes = sorted({s.beams for s in self.sequences.values()} - {1})
            self._layout = _Layout(
                greedy=greedy,
                greedy_rows=np.concatenate([np.zeros(0, int), *(s.rows for s in greedy)]),
                beam_groups=[[s for s in self.sequences.values() if s.beams == K] for K in sizes],
            )
        return self._layout

    def _advance_beams(
        self,
        seqs: list[_Sequence],
        logits: np.ndarray,
        next_tokens: np.ndarray,
        order: np.ndarray,
        outcomes: list[Outcome],
        done: set[int],
    ) -> None:
        """One beam step for the sequences `seqs` (all with the same beam size)."""
        n, K, V = len(seqs), seqs[0].beams, logits.shape[-1]
        rows = np.stack([s.rows for s in seqs])  # (n, K)
        logp = _log_softmax(logits[rows.reshape(-1)]).reshape(n, K, V)
        beam, token, scores, lengths, finished = self.generator.beam_advance(
            logp,
            np.stack([s.scores for s in seqs]),  # type: ignore[misc]
            np.stack([s.lengths for s in seqs]),  # type: ignore[misc]
            np.stack([s.finished for s in seqs]),  # type: ignore[misc]
            self.length_penalty,
        )
        order[rows.reshape(-1)] = np.take_along_axis(rows, beam, 1).reshape(-1)
        next_tokens[rows.reshape(-1)] = token.reshape(-1)
        for j, seq in enumerate(seqs):
            assert seq.history is not None
            seq.history = np.concatenate([seq.history[beam[j]], token[j][:, None]], axis=1)
            seq.scores, seq.lengths, seq.finished = scores[j], lengths[j], finished[j]
            seq.steps += 1
            if finished[j].all() or seq.steps >= seq.max_steps:
                best = seq.history[0, : lengths[j][0]].tolist()  # beam 0 is the best
                outcomes.append(Outcome(seq.seq_id, None, best))
                done.add(seq.seq_id)

    # ------------------------------------------------------------------ membership

    def encode(self, joins: Sequence[Join]) -> list[EncodedRun]:
        """Run the joiners' encoder, in runs of similar source length (`split_runs`; a run costs
        ~19 padded tokens of fixed overhead on the demo translator). Padding changes no id: a
        source's encoder outputs are bitwise the same padded or alone (898 of 898 in padded runs
        of 2 to 8). One run per distinct length cost 2.4x the request batcher's encoder time per
        request at 32 HTTP users (py-spy), joiners arriving 1 to 3 a step.

        Reads only the encoder session, so another thread may run it while `step` decodes: the
        scheduler encodes the next joiners beside the running batch's step."""
        g = self.generator
        by_length = sorted(joins, key=lambda j: len(j.src_ids))
        runs = split_runs([len(j.src_ids) for j in by_length], JOIN_RUN_OVERHEAD_TOKENS)
        return [
            EncodedRun(tuple(run), g.start(g.pad([j.src_ids for j in run])))
            for run in (by_length[start:end] for start, end in runs)
        ]

    def _join(self, runs: Sequence[EncodedRun], order: Sequence[int]) -> None:
        """Write encoded joiners into spare slots; `order` (seq ids) is the order they joined
        in, which outcomes follow."""
        joined: dict[int, _Sequence] = {}
        for run in runs:
            for seq in self._join_run(run):
                joined[seq.seq_id] = seq
        for seq_id in order:
            self.sequences[seq_id] = joined[seq_id]
        self._layout = None

    def _join_run(self, run: EncodedRun) -> list[_Sequence]:
        g, joins, fresh = self.generator, run.joins, run.fresh
        beams = [j.beam_size for j in joins]
        if max(beams) > 1:  # a beam-K sequence's K rows start from copies of its source
            fresh = fresh.select(np.repeat(np.arange(len(joins)), beams))
        needed = sum(beams)
        if self.live + needed > self.slots:
            self._grow(batch_arrays.slots_to_grow_to(self.slots, self.live + needed), fresh)
        rows = np.arange(self.live, self.live + needed)
        self._write_rows(rows, fresh)
        self.src_len[rows] = np.repeat([len(j.src_ids) for j in joins], beams)
        self.live += needed
        start, joined = 0, []
        for j in joins:
            K = j.beam_size
            seq = _Sequence(j.seq_id, K, len(j.src_ids), g.max_steps(j.max_new_tokens))
            seq.rows = rows[start : start + K].copy()
            start += K
            if K > 1:
                seq.scores = np.full(K, -np.inf, np.float32)
                seq.scores[0] = 0.0  # all beams start identical: let only the first one propose
                seq.lengths = np.zeros(K, np.int64)
                seq.finished = np.zeros(K, bool)
                seq.history = np.zeros((K, 0), np.int64)
            for r in seq.rows.tolist():
                self.owner[r] = seq.seq_id
            joined.append(seq)
        return joined

    def _grow(self, slots: int, like: DecoderState) -> None:
        """Arrays of `slots` slots keeping the live rows (the spare ones are zeros)."""
        self.state = batch_arrays.grown(self.state, like, slots, self.live)
        extra = slots - len(self.owner)
        self.tokens = np.concatenate([self.tokens, np.zeros(extra, np.int64)])
        self.owner.extend([None] * extra)
        self.src_len = np.concatenate([self.src_len, np.zeros(extra, np.int64)])

    def _write_rows(self, rows: np.ndarray, fresh: DecoderState) -> None:
        """Put the joiners' encoder outputs into spare `rows`, in place (the source axis grows
        for everyone only when a joiner's source is longer than every other)."""
        assert self.state is not None
        S_new = fresh.cross_k.shape[3]
        state = self.state = batch_arrays.pad_source(self.state, S_new)
        state.memory_mask[rows] = False
        state.memory_mask[rows, :S_new] = fresh.memory_mask
        state.cross_k[:, rows] = 0.0
        state.cross_k[:, rows, :, :S_new] = fresh.cross_k
        state.cross_v[:, rows] = 0.0
        state.cross_v[:, rows, :, :S_new] = fresh.cross_v
        state.position[rows] = 0  # no column is theirs yet: whatever is there goes unread
        self.tokens[rows] = self.generator.sos_id or 0  # always set; typed Optional

    def _free(self, seq_ids: set[int]) -> None:
        """Drop the sequences `seq_ids`: the last live rows move into their rows."""
        freed: list[int] = []
        for seq_id in seq_ids:
            seq = self.sequences.pop(seq_id, None)
            if seq is not None:
                freed += seq.rows.tolist()
        if not freed:
            return
        self._layout = None
        assert self.state is not None
        for row in sorted(freed, reverse=True):  # every freed row after `row` is gone already
            last = self.live - 1
            if row != last:
                batch_arrays.move_row(self.state, last, row, self.generator.left_aligned)
                self.tokens[row], self.src_len[row] = self.tokens[last], self.src_len[last]
                moved = self.owner[row] = self.owner[last]
                assert moved is not None
                rows = self.sequences[moved].rows
                rows[rows == last] = row
            self.owner[last] = None
            self.src_len[last] = 0
            self.live = last

    def _cut_source_columns(self) -> None:
        """After a leave: cut the source columns no live row needs (sources are right-padded;
        every row keeps its masked column(s)) once they are TRIM_SLACK_COLUMNS and half the
        columns: a masked column costs a step little, and the next long joiner pads them back."""
        if self.state is None or self._layout is not None:  # nobody left since the last check
            return
        S = self.state.cross_k.shape[3]
        needed = min(int(self.src_len[: self.live].max()) + MASKED_TAIL_COLUMNS, S)
        if S - needed >= max(TRIM_SLACK_COLUMNS, needed):
            self.state = batch_arrays.with_columns(self.state, slice(0, needed), slice(None))

    def _trim_columns(self) -> None:
        """Cut self-attention columns no live row needs (the cache layout's end opposite the
        rows' first positions: the generator's `needed_columns`): a masked step attends over
        every column, so once TRIM_SLACK_COLUMNS are unneeded; a group_query step reads each
        row's own columns only, so the cut is for memory, once half the columns are unneeded
        (each cut and the growth after it copy the caches: cache_binding.with_room)."""
        if self.state is None or not self.sequences:
            return
        keep = self.generator.needed_columns(batch_arrays.prefix(self.state, self.live))
        kept = keep.stop - keep.start
        slack = max(TRIM_SLACK_COLUMNS, kept) if self.generator.left_aligned else TRIM_SLACK_COLUMNS
        if self.state.self_k.shape[3] - kept < slack:
            return
        self.state = batch_arrays.with_columns(self.state, slice(None), keep)
