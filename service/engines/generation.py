"""Greedy and beam search for the exported translator on ONNX Runtime (numpy only, no torch).

The graphs' interface (inputs, outputs, shapes, the two decoder kinds and their cache layouts)
is service/engines/translator_graphs.py's.

Decoding rules (the same as the PyTorch decoder in model_src.translator.decoding, so exported
and PyTorch output match token for token under greedy search):
- outputs are id lists without <sos>, including the final <eos> when the hypothesis finished;
  one cut by `max_new_tokens` has no <eos>. <pad> and <sos> are never generated.
- greedy: argmax at each step; finished rows leave the batch.
- beam search keeps finished hypotheses in the beam, frozen (one continuation: itself, score
  unchanged), ranked by `sum log p / length ** length_penalty` (length counts generated tokens
  including <eos>). A source stops when all its beams finished; its answer is the best beam.
  beam_size 1 is greedy search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.engines.cache_binding import (
    CACHE_GROWTH_COLUMNS,
    StepBinding,
    layer_feeds,
    run_in_place,
    with_room,
)
from service.engines.session import SessionSettings, create_session, is_released, released_session
from service.engines.translator_graphs import (
    CACHES,
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_OUTPUTS,
    GROUP_QUERY,
    SELF_CACHES,
    STEP_INPUTS,
    decoder_inputs,
)

# Masked memory columns every source row keeps after its ids: ORT's cross-attention gives a row
# the same bits with any number of them but other last bits with none, which an int8 decoder's
# rounding turned into another beam (reports/translation-benchmark.md, stop 34).
MASKED_TAIL_COLUMNS = 1


@dataclass
class DecoderState:
    """The decoding state of a batch of hypotheses (shapes: engines/translator_graphs.py)."""

    memory_mask: np.ndarray
    cross_k: np.ndarray
    cross_v: np.ndarray
    self_k: np.ndarray
    self_v: np.ndarray
    position: np.ndarray  # int64 [B]: position of the next input token

    def select(self, index: np.ndarray, cross: bool = True) -> DecoderState:
        """Keep/reorder/duplicate hypotheses: row i of the result is row index[i].

        cross=False keeps the source-side arrays as they are; valid when `index` maps every row
        to a row of the same source (beam reordering), and it saves copying them every step.
        """
        return DecoderState(
            memory_mask=self.memory_mask[index] if cross else self.memory_mask,
            cross_k=self.cross_k[:, index] if cross else self.cross_k,
            cross_v=self.cross_v[:, index] if cross else self.cross_v,
            self_k=self.self_k[:, index],
            self_v=self.self_v[:, index],
            position=self.position[index],
        )


def _metadata_int(session: ort.InferenceSession, key: str, default: int | None) -> int | None:
    value = session.get_modelmeta().custom_metadata_map.get(key)
    return int(value) if value is not None else default


class OnnxGenerator:
    """Batched greedy and beam search over an encoder and a decoder-step session."""

    def __init__(
        self,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        pad_id: int | None = None,
        sos_id: int | None = None,
        eos_id: int | None = None,
    ) -> None:
        """Special ids default to the decoder graph's metadata (then 0, 1, 2)."""
        self.encoder = encoder
        self.decoder = decoder
        self.pad_id = pad_id if pad_id is not None else _metadata_int(decoder, "pad_id", 0)
        self.sos_id = sos_id if sos_id is not None else _metadata_int(decoder, "sos_id", 1)
        self.eos_id = eos_id if eos_id is not None else _metadata_int(decoder, "eos_id", 2)
        self.max_positions = _metadata_int(decoder, "max_positions", None)
        names = [i.name for i in decoder.get_inputs()]
        self.left_aligned = (  # cache layouts: translator_graphs; else masked or older
            decoder.get_modelmeta().custom_metadata_map.get("self_attention") == GROUP_QUERY
        )
        self.has_self_mask = "self_mask" in names
        # rows at different steps may share a run (service.engines.decode_batch)
        self.mixed_steps = self.left_aligned or self.has_self_mask
        self.layers = sum(n.startswith("self_k_") for n in names)  # group_query: per-layer caches
        expected = (
            decoder_inputs(GROUP_QUERY, self.layers)
            if self.left_aligned
            else (*STEP_INPUTS, *CACHES)
        )
        missing = [n for n in expected if n not in names]
        if missing:
            raise ValueError(f"decoder graph lacks inputs {missing}; expected {expected}")
        self.outputs = [o.name for o in decoder.get_outputs()]
        self.recorded_feeds: list[dict[str, np.ndarray]] | None = None  # a copy of every step's

    def release_sessions(self) -> None:
        """Drop both sessions (their memory goes back with the caller's `malloc_trim`), keeping
        what was read from them: special ids, `max_steps`, the cache layout. Any run after it
        raises `SessionsReleased`."""
        self.encoder = self.decoder = released_session()

    @property
    def sessions_released(self) -> bool:
        return is_released(self.decoder)

    @classmethod
    def from_directory(
        cls,
        version_dir: Path,
        settings: SessionSettings = SessionSettings(providers="cpu"),
    ) -> OnnxGenerator:
        encoder, _ = create_session(version_dir / ENCODER_FILE, settings)
        decoder, _ = create_session(version_dir / DECODER_FILE, settings)
        return cls(encoder, decoder)

    # ---- the two graphs ------------------------------------------------------------------------
    def start(self, src_ids: np.ndarray) -> DecoderState:
        """Run the encoder; the state has an empty self-attention cache at position 0, and every
        row at least MASKED_TAIL_COLUMNS padding columns after its source."""
        pad_id = self.pad_id or 0
        B, S = src_ids.shape
        if not (src_ids[:, S - MASKED_TAIL_COLUMNS :] == pad_id).all():
            # written out: np.pad took 58 us a call here against 4 (0.9% of a decode lane)
            padded = np.full((B, S + MASKED_TAIL_COLUMNS), pad_id, np.int64)
            padded[:, :S] = src_ids
            src_ids = padded
        memory_mask, cross_k, cross_v = self.encoder.run(
            list(ENCODER_OUTPUTS), {"src_ids": np.ascontiguousarray(src_ids, dtype=np.int64)}
        )
        L, B, H, _, hd = cross_k.shape
        empty = np.zeros((L, B, H, 0, hd), dtype=cross_k.dtype)  # no position decoded yet
        return DecoderState(memory_mask, cross_k, cross_v, empty, empty, np.zeros(B, np.int64))

    def step(
        self, state: DecoderState, tokens: np.ndarray, binding: StepBinding | None = None
    ) -> tuple[np.ndarray, DecoderState]:
        """Feed tokens [B] at the state's positions -> next-token logits [B, V], advanced state.
        Rows may be at different positions when `mixed_steps` (caches laid out as the module
        docstring says); in a request-level batch every row is at the same one. A group_query
        step writes into `state`'s caches (growing them first when a row reached their end):
        the returned state holds the same arrays. `binding`: a group_query step's kept binding
        (`step_binding`), whose logits the next step through it overwrites."""
        tokens = tokens.astype(np.int64, copy=False)
        if self.left_aligned:
            logits, self_k, self_v = self._step_in_place(state, tokens, binding)
        else:
            feeds: dict[str, Any] = {
                "tokens": tokens,
                "position": state.position,
                "memory_mask": state.memory_mask,
                **{cache: getattr(state, cache) for cache in CACHES},
            }
            if self.has_self_mask:  # right-aligned: row b sees its last t_b columns and the new
                T = state.self_k.shape[3]
                feeds["self_mask"] = np.arange(T + 1)[None, :] >= (T - state.position)[:, None]
            self._record(feeds)
            logits, self_k, self_v = self.decoder.run(self.outputs, feeds)
        logits = logits.astype(np.float32, copy=False)
        logits[:, self.pad_id] = -np.inf  # never generate padding or a second start
        logits[:, self.sos_id] = -np.inf
        next_state = DecoderState(
            state.memory_mask, state.cross_k, state.cross_v, self_k, self_v, state.position + 1
        )
        return logits, next_state

    def step_binding(self) -> StepBinding | None:
        """A binding to keep for one caller's steps (group_query decoders; None otherwise)."""
        return StepBinding(self.decoder, SELF_CACHES) if self.left_aligned else None

    def _step_in_place(
        self, state: DecoderState, tokens: np.ndarray, binding: StepBinding | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A group_query step (service/engines/cache_binding.py): it writes into the state's
        self-attention caches, grown first when a row reached their end."""
        state.self_k, state.self_v = with_room(state.self_k, state.self_v, state.position)
        feeds = layer_feeds(
            {"tokens": tokens, "position": state.position, "memory_mask": state.memory_mask},
            {cache: getattr(state, cache) for cache in CACHES},
            self.layers,
        )
        self._record(feeds)
        if binding is not None:
            logits = binding.run(feeds)
        else:
            logits = run_in_place(self.decoder, feeds, SELF_CACHES)
        return logits, state.self_k, state.self_v

    def _record(self, feeds: dict[str, np.ndarray]) -> None:
        """Keep a copy of the step's feeds when asked (int8 calibration)."""
        if self.recorded_feeds is not None:
            self.recorded_feeds.append({k: np.array(v) for k, v in feeds.items()})

    def needed_columns(self, state: DecoderState) -> slice:
        """The self-attention cache columns some row still needs (the longest row's), by layout:
        the caller cuts the others off."""
        needed = int(state.position.max(initial=0))
        T = state.self_k.shape[3]
        if self.left_aligned:  # and room for the next steps' writes (_step_in_place)
            return slice(0, min(T, needed + CACHE_GROWTH_COLUMNS))
        return slice(T - needed, T)

    def max_steps(self, max_new_tokens: int) -> int:
        """Positions beyond the sinusoidal table cannot be represented."""
        if self.max_positions is None:
            return max_new_tokens
        return min(max_new_tokens, self.max_positions)

    # ---- search --------------------------------------------------------------------------------
    def pad(self, sources: Sequence[Sequence[int]]) -> np.ndarray:
        """Right-pad id lists into an int64 [B, S] array."""
        S = max(len(s) for s in sources)
        out = np.full((len(sources), S), self.pad_id, dtype=np.int64)
        for i, ids in enumerate(sources):
            out[i, : len(ids)] = ids
        return out

    def generate(
        self,
        sources: Sequence[Sequence[int]],
        beam_size: int = 1,
        max_new_tokens: int = 128,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Decode one batch of encoded sources (each ending in <eos>), results in input order."""
        if not sources:
            return []
        src_ids = self.pad(sources)
        if beam_size == 1:
            return self.greedy(src_ids, max_new_tokens)
        return self.beam_search(src_ids, beam_size, max_new_tokens, length_penalty)

    def greedy(self, src_ids: np.ndarray, max_new_tokens: int = 128) -> list[list[int]]:
        """Most probable next token at every step, for each row of src_ids [B, S]."""
        B = src_ids.shape[0]
        state = self.start(src_ids)
        tokens = np.full(B, self.sos_id, dtype=np.int64)
        alive = np.arange(B)  # source row of each hypothesis still being decoded
        out: list[list[int]] = [[] for _ in range(B)]
        for _ in range(self.max_steps(max_new_tokens)):
            logits, state = self.step(state, tokens)
            tokens = logits.argmax(-1)
            for row, token in zip(alive.tolist(), tokens.tolist(), strict=True):
                out[row].append(token)
            keep = np.flatnonzero(tokens != self.eos_id)  # finished rows leave the batch
            if keep.size == 0:
                break
            if keep.size < alive.size:
                state = state.select(keep)
                tokens, alive = tokens[keep], alive[keep]
        return out

    def beam_search(
        self,
        src_ids: np.ndarray,
        beam_size: int = 4,
        max_new_tokens: int = 128,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Best hypothesis per row of src_ids [B, S]; the rules are in the module docstring."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        K = beam_size
        B = src_ids.shape[0]
        state = self.start(src_ids).select(np.repeat(np.arange(B), K))  # rows b*K .. b*K+K-1
        scores = np.full((B, K), -np.inf, dtype=np.float32)
        scores[:, 0] = 0.0  # all beams start identical: let only the first one propose
        finished = np.zeros((B, K), dtype=bool)
        lengths = np.zeros((B, K), dtype=np.int64)
        history = np.zeros((B, K, 0), dtype=np.int64)  # generated tokens
        tokens = np.full(B * K, self.sos_id, dtype=np.int64)
        alive = np.arange(B)  # source row of each source still searching
        results: list[list[int]] = [[] for _ in range(B)]

        def emit(rows: np.ndarray) -> None:
            for i in rows.tolist():
                results[int(alive[i])] = history[i, 0, : lengths[i, 0]].tolist()  # beam 0 is best

        for _ in range(self.max_steps(max_new_tokens)):
            logits, state = self.step(state, tokens)
            n, V = alive.size, logits.shape[-1]
            beam, token, scores, lengths, finished = self.beam_advance(
                _log_softmax(logits).reshape(n, K, V), scores, lengths, finished, length_penalty
            )
            history = np.concatenate(
                [history[np.arange(n)[:, None], beam], token[..., None]], axis=2
            )  # (n, K, t+1)
            rows = (np.arange(n)[:, None] * K + beam).reshape(-1)  # (n*K,), within each source
            state = state.select(rows, cross=False)
            tokens = token.reshape(-1)

            done = finished.all(1)  # (n,)
            if done.any():
                emit(np.flatnonzero(done))
                keep = np.flatnonzero(~done)
                if keep.size == 0:
                    return results
                keep_rows = (keep[:, None] * K + np.arange(K)).reshape(-1)
                state = state.select(keep_rows)
                tokens = tokens[keep_rows]
                scores, finished = scores[keep], finished[keep]
                lengths, history, alive = lengths[keep], history[keep], alive[keep]
        emit(np.arange(alive.size))
        return results

    def beam_advance(
        self,
        logp: np.ndarray,
        scores: np.ndarray,
        lengths: np.ndarray,
        finished: np.ndarray,
        length_penalty: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One beam step for n sources of K beams: log-probs (n, K, V) and the beams' scores,
        lengths and finished flags (n, K) -> for the K best extensions of each source (best
        first): the beam each extends, its token, and the new scores, lengths, finished flags.
        The rules are in the module docstring; the step scheduler calls this too, so a source
        decoded beside others ranks its hypotheses exactly as it would alone."""
        n, K, V = logp.shape
        cand = scores[..., None] + logp  # (n, K, V) raw scores of every extension
        cand[finished] = -np.inf
        cand[..., self.pad_id] = np.where(finished, scores, cand[..., self.pad_id])  # frozen
        cand_len = np.where(finished, lengths, lengths + 1)  # (n, K)
        norm = cand / (cand_len[..., None].astype(np.float32) ** length_penalty)
        top_idx = _topk(norm.reshape(n, K * V), K)  # (n, K), best first
        beam, token = top_idx // V, top_idx % V
        new_scores = np.take_along_axis(cand.reshape(n, K * V), top_idx, 1)
        new_lengths = np.take_along_axis(cand_len, beam, 1)
        new_finished = np.take_along_axis(finished, beam, 1) | (token == self.eos_id)
        return beam, token, new_scores, new_lengths, new_finished


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax; rows hold finite maxima (only pad/sos are -inf)."""
    shifted = x - x.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):  # exp(-inf) = 0 is intended for the masked ids
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (like torch.topk)."""
    part = np.argpartition(-x, k - 1, axis=1)[:, :k]  # the k largest, unordered
    order = np.argsort(-np.take_along_axis(x, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)
