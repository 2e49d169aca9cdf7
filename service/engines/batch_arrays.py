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
    L, _, H, S_like, hd = like.cross_k.shape
    S = max(S_like, state.cross_k.shape[3]) if state is not None else S_like
    T = state.self_k.shape[3] if state is not None else 0
    dtype = like.cross_k.dtype

    def new(shape: tuple[int, ...], old: np.ndarray | None, fill: type | np.dtype) -> np.ndarray:
        out = np.zeros(shape, fill)
        if old is not None and keep:
            if old.ndim == 5:
                out[:, :keep, :, : old.shape[3]] = old[:, :keep]
            else:
                out[:keep, : old.shape[1]] = old[:keep]
        return out

    old = state
    position = np.zeros(slots, np.int64)
    if old is not None:
        position[:keep] = old.position[:keep]
    return DecoderState(
        memory_mask=new((slots, S), old.memory_mask if old else None, bool),
        cross_k=new((L, slots, H, S, hd), old.cross_k if old else None, dtype),
        cross_v=new((L, slots, H, S, hd), old.cross_v if old else None, dtype),
        self_k=new((L, slots, H, T, hd), old.self_k if old else None, dtype),
        self_v=new((L, slots, H, T, hd), old.self_v if old else None, dtype),
        position=position,
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
    S = state.cross_k.shape[3]
    if columns <= S:
        return state

    def padded(x: np.ndarray, axis: int) -> np.ndarray:
        out = np.zeros((*x.shape[:axis], columns, *x.shape[axis + 1 :]), x.dtype)
        out[(slice(None),) * axis + (slice(0, S),)] = x
        return out

    return DecoderState(
        memory_mask=padded(state.memory_mask, 1),
        cross_k=padded(state.cross_k, 3),
        cross_v=padded(state.cross_v, 3),
        self_k=state.self_k,
        self_v=state.self_v,
        position=state.position,
    )
