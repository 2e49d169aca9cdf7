"""The running decode batch's arrays (service/engines/decode_batch.py) grown, cut and shuffled
row by row: the copies a join, a leave or a trim makes, kept apart from the batch's bookkeeping.

Every function takes a `DecoderState` whose batch axis holds slots: axis 1 of the [L, B, ...]
caches, axis 0 of memory_mask and position.
"""

from __future__ import annotations

import numpy as np

from service.engines.generation import DecoderState

# Rows added beyond a join's need when the arrays grow, as a share of the rows they had: a run of
# joins copies the batch a few times, not once per join (spare rows cost memory, never a step).
GROWTH_SPARE_FRACTION = 0.5


def prefix(state: DecoderState, rows: int) -> DecoderState:
    """The first `rows` slots as views (each layer of a cache stays one contiguous block, so a
    group_query step still writes into the batch's arrays)."""
    return DecoderState(
        memory_mask=state.memory_mask[:rows],
        cross_k=state.cross_k[:, :rows],
        cross_v=state.cross_v[:, :rows],
        self_k=state.self_k[:, :rows],
        self_v=state.self_v[:, :rows],
        position=state.position[:rows],
    )


def grown(state: DecoderState | None, like: DecoderState, slots: int, keep: int) -> DecoderState:
    """Arrays of `slots` slots whose first `keep` are `state`'s (zeros elsewhere), with room for
    `like`'s source columns; `state` None: empty arrays shaped like `like`."""
    L, _, H, S, hd = like.cross_k.shape
    if state is None:
        empty = np.zeros((L, 0, H, 0, hd), like.cross_k.dtype)
        state = DecoderState(
            np.zeros((0, S), bool), empty, empty, empty, empty, np.zeros(0, np.int64)
        )
        keep = 0
    S = max(S, state.cross_k.shape[3])
    T = state.self_k.shape[3]
    return DecoderState(
        memory_mask=_embedded(state.memory_mask[:keep], (slots, S)),
        cross_k=_embedded(state.cross_k[:, :keep], (L, slots, H, S, hd)),
        cross_v=_embedded(state.cross_v[:, :keep], (L, slots, H, S, hd)),
        self_k=_embedded(state.self_k[:, :keep], (L, slots, H, T, hd)),
        self_v=_embedded(state.self_v[:, :keep], (L, slots, H, T, hd)),
        position=_embedded(state.position[:keep], (slots,)),
    )


def slots_to_grow_to(slots: int, needed: int) -> int:
    """Slots after growing `slots` so that `needed` fit (GROWTH_SPARE_FRACTION spare)."""
    return max(needed, slots + int(slots * GROWTH_SPARE_FRACTION))


def move_row(state: DecoderState, source: int, target: int, left_aligned: bool) -> None:
    """Copy slot `source` of every array into slot `target`, in place (`left_aligned` caches:
    only the columns the row has decoded, the only ones its steps read)."""
    state.memory_mask[target] = state.memory_mask[source]
    for cache in (state.cross_k, state.cross_v):
        cache[:, target] = cache[:, source]
    own = slice(0, int(state.position[source])) if left_aligned else slice(None)
    for cache in (state.self_k, state.self_v):
        cache[:, target, :, own] = cache[:, source, :, own]
    state.position[target] = state.position[source]


def with_columns(state: DecoderState, source: slice, own: slice) -> DecoderState:
    """Contiguous copies keeping the `source` columns of memory_mask and the cross caches and
    the `own` columns of the self-attention caches (every slot)."""
    return DecoderState(
        memory_mask=np.ascontiguousarray(state.memory_mask[:, source]),
        cross_k=np.ascontiguousarray(state.cross_k[:, :, :, source]),
        cross_v=np.ascontiguousarray(state.cross_v[:, :, :, source]),
        self_k=np.ascontiguousarray(state.self_k[:, :, :, own]),
        self_v=np.ascontiguousarray(state.self_v[:, :, :, own]),
        position=state.position,
    )


def pad_source(state: DecoderState, columns: int) -> DecoderState:
    """The state with its source axis right-padded to `columns` (zeros, False for the mask)."""
    if columns <= state.cross_k.shape[3]:
        return state
    L, B, H, _, hd = state.cross_k.shape
    return DecoderState(
        memory_mask=_embedded(state.memory_mask, (B, columns)),
        cross_k=_embedded(state.cross_k, (L, B, H, columns, hd)),
        cross_v=_embedded(state.cross_v, (L, B, H, columns, hd)),
        self_k=state.self_k,
        self_v=state.self_v,
        position=state.position,
    )


def _embedded(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zeros of `shape` (at least `x`'s on every axis) with `x` in the leading corner."""
    out = np.zeros(shape, x.dtype)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out
