"""The running decode batch of the step scheduler: tensors only (the mechanism; who joins and
leaves is `service.decode_scheduler`'s policy).

Sequences at different steps share one decoder run:

- rows: a sequence holds `beam_size` consecutive rows (greedy: one), in join order;
- self-attention cache [L, B, H, T, hd] with T = the longest cache among the rows. A row that has
  decoded t positions keeps them in the last t columns (left-padded with zeros) and the decoder's
  `self_mask` hides the padding. The graph appends the new position at column T, so every row stays
  right-aligned and the graph's output is the next step's input as it is: no copy per step beyond
  the one the graph makes anyway. Columns nobody needs any more are cut off the left edge when the
  longest sequence leaves;
- cross-attention keys/values [L, B, H, S, hd] and memory_mask [B, S], S = the longest source,
  right-padded like a padded batch; rebuilt only in steps where rows join or leave.

Why this layout (measured, reports/translation-benchmark.md): one decoder run per step whatever
the mix of steps, where grouping rows by cache length needs one run per distinct length, and a
cache preallocated to the maximum length attends over (and copies) every column at every step.

Every rule of the search (argmax; beam ranking, frozen finished beams, the best beam as answer)
is `service.generation`'s, so a sequence decodes to the same ids as it does alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.generation import DecoderState, OnnxGenerator, _log_softmax


@dataclass(frozen=True)
class Join:
    """A sequence entering the batch: its encoded source (ending in <eos>) and search."""

    seq_id: int
    src_ids: Sequence[int]
    beam_size: int
    max_new_tokens: int


@dataclass(frozen=True)
class Outcome:
    """What one step did for one sequence."""

    seq_id: int
    token: int | None  # greedy: the token decoded this step (beam search: None until done)
    result: list[int] | None  # the final ids, when the sequence finished this step


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


class DecodeBatch:
    """Not thread-safe: one thread (the model's worker) calls `step` at a time."""

    def __init__(self, generator: OnnxGenerator, length_penalty: float = 1.0) -> None:
        if not generator.has_self_mask:
            raise ValueError(
                "decoder.onnx has no self_mask input (exported before step scheduling); "
                "re-export the translator to decode step by step"
            )
        self.generator = generator
        self.length_penalty = length_penalty
        self.sequences: list[_Sequence] = []  # in row order
        self.state: DecoderState | None = None
        self.tokens = np.zeros(0, np.int64)  # next input token per row

    # ------------------------------------------------------------------ views

    @property
    def rows(self) -> int:
        return sum(s.beams for s in self.sequences)

    @property
    def cache_tokens(self) -> int:
        """Padded positions the caches hold: rows x (source columns + self-attention columns)."""
        if self.state is None:
            return 0
        return self.rows * (self.state.cross_k.shape[3] + self.state.self_k.shape[3])

    # ------------------------------------------------------------------ the step

    def step(self, joins: Sequence[Join], leaves: Iterable[int]) -> list[Outcome]:
        """Drop `leaves` (seq ids), add `joins` (their encoder runs once, batched), run one
        decoder step for every row, advance every search; finished sequences leave at once."""
        self._remove(set(leaves))
        if joins:
            self._join(joins)
        if self.state is None or not self.sequences:
            return []
        state = self.state
        T = state.self_k.shape[3]
        steps = np.repeat([s.steps for s in self.sequences], [s.beams for s in self.sequences])
        self_mask = np.arange(T + 1)[None, :] >= (T - steps)[:, None]  # (B, T+1)
        logits, state = self.generator.step(state, self.tokens, self_mask)
        next_tokens = np.empty_like(self.tokens)
        order = np.arange(self.tokens.size)  # beam reordering of the rows (within sequences)
        outcomes, done = [], set()
        starts = np.cumsum([0] + [s.beams for s in self.sequences])
        greedy = [i for i, s in enumerate(self.sequences) if s.beams == 1]
        if greedy:
            rows = starts[greedy]
            chosen = logits[rows].argmax(-1)
            next_tokens[rows] = chosen
            for i, token in zip(greedy, chosen.tolist(), strict=True):
                seq = self.sequences[i]
                seq.steps += 1
                seq.greedy_ids.append(token)
                finished = token == self.generator.eos_id or seq.steps >= seq.max_steps
                outcomes.append(Outcome(seq.seq_id, token, seq.greedy_ids if finished else None))
                if finished:
                    done.add(seq.seq_id)
        for K in sorted({s.beams for s in self.sequences} - {1}):
            group = [i for i, s in enumerate(self.sequences) if s.beams == K]
            rows = (starts[group][:, None] + np.arange(K)).reshape(-1)
            self._advance_beams(group, rows, logits, next_tokens, order, outcomes, done)
        state = (
            state.select(order, cross=False) if (order != np.arange(order.size)).any() else state
        )
        self.state, self.tokens = state, next_tokens
        self._remove(done)
        return outcomes

    def _advance_beams(
        self,
        group: list[int],
        rows: np.ndarray,
        logits: np.ndarray,
        next_tokens: np.ndarray,
        order: np.ndarray,
        outcomes: list[Outcome],
        done: set[int],
    ) -> None:
        """One beam step for the sequences `group` (all with the same beam size)."""
        seqs = [self.sequences[i] for i in group]
        n, K, V = len(seqs), seqs[0].beams, logits.shape[-1]
        logp = _log_softmax(logits[rows]).reshape(n, K, V)
        beam, token, scores, lengths, finished = self.generator.beam_advance(
            logp,
            np.stack([s.scores for s in seqs]),  # type: ignore[misc]
            np.stack([s.lengths for s in seqs]),  # type: ignore[misc]
            np.stack([s.finished for s in seqs]),  # type: ignore[misc]
            self.length_penalty,
        )
        order[rows] = (rows.reshape(n, K)[:, :1] + beam).reshape(-1)
        next_tokens[rows] = token.reshape(-1)
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

    def _join(self, joins: Sequence[Join]) -> None:
        g = self.generator
        fresh = g.start(g.pad([j.src_ids for j in joins]))
        fresh = fresh.select(np.repeat(np.arange(len(joins)), [j.beam_size for j in joins]))
        for j in joins:
            K = j.beam_size
            seq = _Sequence(j.seq_id, K, len(j.src_ids), g.max_steps(j.max_new_tokens))
            if K > 1:
                seq.scores = np.full(K, -np.inf, np.float32)
                seq.scores[0] = 0.0  # all beams start identical: let only the first one propose
                seq.lengths = np.zeros(K, np.int64)
                seq.finished = np.zeros(K, bool)
                seq.history = np.zeros((K, 0), np.int64)
            self.sequences.append(seq)
        tokens = np.full(fresh.position.size, g.sos_id, np.int64)
        if self.state is None:
            self.state, self.tokens = fresh, tokens
            return
        old = self.state
        S = max(old.cross_k.shape[3], fresh.cross_k.shape[3])
        T = old.self_k.shape[3]  # new rows have no cache yet: all T columns are padding
        L, B, H, _, hd = fresh.self_k.shape
        empty = np.zeros((L, B, H, T, hd), old.self_k.dtype)
        self.state = DecoderState(
            memory_mask=np.concatenate(
                [_pad_axis(old.memory_mask, 1, S), _pad_axis(fresh.memory_mask, 1, S)]
            ),
            cross_k=np.concatenate(
                [_pad_axis(old.cross_k, 3, S), _pad_axis(fresh.cross_k, 3, S)], 1
            ),
            cross_v=np.concatenate(
                [_pad_axis(old.cross_v, 3, S), _pad_axis(fresh.cross_v, 3, S)], 1
            ),
            self_k=np.concatenate([old.self_k, empty], 1),
            self_v=np.concatenate([old.self_v, empty], 1),
            position=np.concatenate([old.position, fresh.position]),
        )
        self.tokens = np.concatenate([self.tokens, tokens])

    def _remove(self, seq_ids: set[int]) -> None:
        """Drop the rows of `seq_ids`; trim padding nobody needs any more."""
        if not seq_ids or self.state is None:
            return
        keep_rows: list[int] = []
        kept: list[_Sequence] = []
        row = 0
        for seq in self.sequences:
            if seq.seq_id not in seq_ids:
                keep_rows.extend(range(row, row + seq.beams))
                kept.append(seq)
            row += seq.beams
        self.sequences = kept
        if not kept:
            self.state, self.tokens = None, np.zeros(0, np.int64)
            return
        index = np.asarray(keep_rows)
        state = self.state.select(index)
        S = max(s.src_len for s in kept)  # sources are right-padded: cut the tail
        T = max(s.steps for s in kept)  # caches are right-aligned: cut the head
        first = state.self_k.shape[3] - T
        contiguous = np.ascontiguousarray  # ORT copies strided inputs anyway; do it once here
        self.state = DecoderState(
            memory_mask=contiguous(state.memory_mask[:, :S]),
            cross_k=contiguous(state.cross_k[:, :, :, :S]),
            cross_v=contiguous(state.cross_v[:, :, :, :S]),
            self_k=contiguous(state.self_k[:, :, :, first:]),
            self_v=contiguous(state.self_v[:, :, :, first:]),
            position=state.position,
        )
        self.tokens = self.tokens[index]

    def reset(self) -> None:
        """Forget every sequence (after a failed step, whose state cannot be trusted)."""
        self.sequences, self.state, self.tokens = [], None, np.zeros(0, np.int64)


def _pad_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Right-pad `x` along `axis` to `size` with zeros (False for masks)."""
    missing = size - x.shape[axis]
    if missing == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, missing)
    return np.pad(x, widths)
