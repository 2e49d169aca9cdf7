"""Greedy and beam search for any model with the translator decoding API, batched over sources.

A model provides (both the Transformer and the GRU baseline do):

    encode(src_ids (B,S)) -> memory, memory_mask (B,S)
    start(memory, memory_mask) -> state           # cache for incremental decoding
    step(state, tokens (B,)) -> logits (B,V), state
    decode(memory, memory_mask, tgt_in (B,T)) -> logits (B,T,V)   # teacher forcing, no cache
    state.select(index (B',)) -> state            # keep / reorder / duplicate hypotheses

`use_cache=False` swaps the cached state for one that keeps only the prefix and re-runs `decode`
over it at every step: the reference the cached path must match token for token, and the
baseline of the cache benchmark. The encoder runs once either way.

Outputs are id lists *including* the final `<eos>` when a hypothesis finished (nothing ever
follows it), without `<sos>`; a hypothesis cut by max_new_tokens has no `<eos>`.

Beam search keeps finished hypotheses inside the beam, frozen: a finished beam proposes one
continuation, itself, with its score unchanged, and competes with live extensions on the
length-normalised score `sum log p / length ** length_penalty` (length counts generated tokens
including `<eos>`; length_penalty 0 ranks by raw log-probability, 1 by the mean). A source stops
when all its beams are finished; its answer is the best beam. With beam size 1 this is greedy
search. `<pad>` and `<sos>` are never generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from model_src.translator.data import pad
from model_src.translator.tokenizer import EOS_ID, PAD_ID, SOS_ID


class DecoderState(Protocol):
    def select(self, index: Tensor) -> DecoderState: ...


class Seq2Seq(Protocol):
    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]: ...
    def decode(self, memory: Tensor, memory_mask: Tensor, tgt_in: Tensor) -> Tensor: ...
    def start(self, memory: Tensor, memory_mask: Tensor) -> Any: ...
    def step(self, state: Any, tokens: Tensor) -> tuple[Tensor, Any]: ...


@dataclass
class PrefixState:
    """Uncached decoding: the encoder output and every token fed so far."""

    memory: Tensor  # (B, S, D)
    memory_mask: Tensor  # (B, S)
    prefix: Tensor  # (B, t)

    def select(self, index: Tensor) -> PrefixState:
        return PrefixState(
            self.memory.index_select(0, index),
            self.memory_mask.index_select(0, index),
            self.prefix.index_select(0, index),
        )


class _Stepper:
    """Runs the model's cached step, or re-decodes the whole prefix when use_cache is False."""

    def __init__(self, model: Seq2Seq, use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache

    def start(self, src_ids: Tensor) -> Any:
        memory, memory_mask = self.model.encode(src_ids)
        if self.use_cache:
            return self.model.start(memory, memory_mask)
        empty = src_ids.new_zeros(src_ids.size(0), 0)
        return PrefixState(memory, memory_mask, empty)

    def step(self, state: Any, tokens: Tensor) -> tuple[Tensor, Any]:
        if self.use_cache:
            logits, state = self.model.step(state, tokens)
        else:
            prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (B, t+1)
            logits = self.model.decode(state.memory, state.memory_mask, prefix)[:, -1]
            state = PrefixState(state.memory, state.memory_mask, prefix)
        logits = logits.float()
        logits[:, PAD_ID] = float("-inf")  # never generate padding or a second start
        logits[:, SOS_ID] = float("-inf")
        return logits, state


def _max_steps(model: Any, max_new_tokens: int) -> int:
    """Cap by the positional table: the Transformer cannot represent positions beyond it."""
    limit = getattr(model, "max_positions", None)
    return max_new_tokens if limit is None else min(max_new_tokens, int(limit))


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, src_ids: Tensor, max_new_tokens: int = 128, use_cache: bool = True
) -> list[list[int]]:
    """Most probable next token at every step, for each source row of src_ids (B,S)."""
    stepper = _Stepper(model, use_cache)
    B = src_ids.size(0)
    state = stepper.start(src_ids)
    tokens = torch.full((B,), SOS_ID, dtype=torch.long, device=src_ids.device)
    alive = list(range(B))  # source row of each hypothesis still being decoded
    out: list[list[int]] = [[] for _ in range(B)]
    for _ in range(_max_steps(model, max_new_tokens)):
        logits, state = stepper.step(state, tokens)
        tokens = logits.argmax(-1)  # (b,)
        for row, token in zip(alive, tokens.tolist(), strict=True):
            out[row].append(token)
        keep = (tokens != EOS_ID).nonzero().squeeze(1)  # finished rows leave the batch
        if keep.numel() == 0:
            break
        if keep.numel() < len(alive):
            state = state.select(keep)
            tokens = tokens.index_select(0, keep)
            alive = [alive[i] for i in keep.tolist()]
    return out


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src_ids: Tensor,
    beam_size: int = 4,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    use_cache: bool = True,
) -> list[list[int]]:
    """Best hypothesis per source row of src_ids (B,S); the rules are in the module docstring."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    K = beam_size
    device = src_ids.device
    stepper = _Stepper(model, use_cache)
    B = src_ids.size(0)
    state = stepper.start(src_ids).select(torch.arange(B, device=device).repeat_interleave(K))
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: let only the first one propose
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    history = torch.zeros(B, K, 0, dtype=torch.long, device=device)  # generated tokens
    tokens = torch.full((B * K,), SOS_ID, dtype=torch.long, device=device)
    alive = torch.arange(B, device=device)  # source row of each source still searching
    results: list[list[int]] = [[] for _ in range(B)]

    def emit(rows: Tensor) -> None:
        for i in rows.tolist():
            best = history[i, 0, : int(lengths[i, 0])]  # beams are sorted: beam 0 is best
            results[int(alive[i])] = best.tolist()

    for _ in range(_max_steps(model, max_new_tokens)):
        logits, state = stepper.step(state, tokens)
        n, V = alive.numel(), logits.size(-1)
        logp = logits.log_softmax(-1).view(n, K, V)
        cand = scores[..., None] + logp  # (n, K, V) raw scores of every extension
        cand = cand.masked_fill(finished[..., None], float("-inf"))
        cand[..., PAD_ID] = torch.where(finished, scores, cand[..., PAD_ID])  # frozen beams
        cand_len = torch.where(finished, lengths, lengths + 1)  # (n, K)
        norm = cand / cand_len[..., None].float().pow(length_penalty)
        top_idx = norm.view(n, K * V).topk(K, dim=1).indices  # (n, K), best first
        beam, token = top_idx // V, top_idx % V
        scores = cand.view(n, K * V).gather(1, top_idx)
        lengths = cand_len.gather(1, beam)
        finished = finished.gather(1, beam) | (token == EOS_ID)
        t = history.size(2)
        history = torch.cat(
            [history.gather(1, beam[..., None].expand(n, K, t)), token[..., None]], 2
        )
        rows = (torch.arange(n, device=device)[:, None] * K + beam).view(-1)  # (n*K,)
        state = state.select(rows)
        tokens = token.view(-1)

        done = finished.all(1)  # (n,)
        if bool(done.any()):
            emit(done.nonzero().squeeze(1))
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                return results
            keep_rows = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)
            state = state.select(keep_rows)
            tokens = tokens.index_select(0, keep_rows)
            scores, finished = scores[keep], finished[keep]
            lengths, history, alive = lengths[keep], history[keep], alive[keep]
    emit(torch.arange(alive.numel()))
    return results


@torch.no_grad()
def generate(
    model: Seq2Seq,
    sources: Sequence[Sequence[int]],
    beam_size: int = 1,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Decode many encoded sources (each ending in <eos>): length-sorted batches so padding stays
    small, results back in input order. beam_size 1 is greedy search."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src = pad([sources[i] for i in chunk]).to(device)
        if beam_size == 1:
            hyps = greedy_decode(model, src, max_new_tokens)
        else:
            hyps = beam_search(model, src, beam_size, max_new_tokens, length_penalty)
        for i, hyp in zip(chunk, hyps, strict=True):
            out[i] = hyp
    return out
