"""A group_query decoder step without copying a cache (service/engines/generation.py's interface).

Each layer's self-attention cache is bound (ONNX Runtime IOBinding) as both its input and its
output, so GroupQueryAttention writes the new position into the caller's array in place, and
every source cache is bound as a view of the stacked [L, ...] array (a layer is a contiguous
block). A masked step, by contrast, copies every cache at least twice: into the graph's per-layer
slices and out of its concatenation (reports/translation-benchmark.md, stop 29).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

CACHE_GROWTH_COLUMNS = 16  # columns a cache grows by when a row reaches its end (amortised copy)


def with_room(
    self_k: np.ndarray, self_v: np.ndarray, position: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The caches [L, B, H, T, hd] as given when every row has a column free for this step's
    position (the kernel writes row b's at column position[b]) and each layer is one contiguous
    block (the first B rows of a larger array are: the decode batch's live rows); else
    contiguous copies with room: at least CACHE_GROWTH_COLUMNS more columns than the longest row
    needs, and twice the columns they had. Growing copies every cache while a step's cost does
    not depend on the columns (each row attends over its own: 3.63 ms at 13 rows with 40 or 128
    columns, recipe translator, reports/translation-benchmark.md, stop 36), so the copies are
    made few: a batch whose rows decode 30 positions grows 17 -> 34 -> 68 columns."""
    T = self_k.shape[3]
    needed = int(position.max(initial=0)) + 1
    if needed <= T and _layers_contiguous(self_k) and _layers_contiguous(self_v):
        return self_k, self_v
    columns = max(needed + CACHE_GROWTH_COLUMNS, 2 * T) if needed > T else T
    return _grow_columns(self_k, columns), _grow_columns(self_v, columns)


def layer_feeds(
    step_inputs: Mapping[str, np.ndarray], caches: Mapping[str, np.ndarray], layers: int
) -> dict[str, np.ndarray]:
    """The decoder's feeds: `step_inputs` as they are and each stacked cache as one view per
    layer, `<cache>_<layer>` (a copy only where a layer is not one contiguous block)."""
    feeds = {name: np.ascontiguousarray(array) for name, array in step_inputs.items()}
    for cache, stacked in caches.items():
        for i in range(layers):
            feeds[f"{cache}_{i}"] = np.ascontiguousarray(stacked[i])
    return feeds


def run_in_place(
    decoder: ort.InferenceSession, feeds: Mapping[str, np.ndarray], written: tuple[str, ...]
) -> np.ndarray:
    """Run one step; the feeds whose names start with one of `written` are also bound as the
    graph's `new_<name>` outputs (the same memory). -> logits."""
    binding = decoder.io_binding()
    binding.bind_output("logits")  # first: get_outputs() follows the binding order
    for name, array in feeds.items():
        if name.startswith(written):
            value = ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(f"new_{name}", value)
        else:
            binding.bind_cpu_input(name, array)
    decoder.run_with_iobinding(binding)
    return binding.get_outputs()[0].numpy()


class StepBinding:
    """`run_in_place` for a caller that steps one batch again and again (the step scheduler's
    decode batch): its IOBinding is kept, and a feed is bound again only when it is not the
    memory bound before (after a join, a leave or a cache's growth); the logits go into one kept
    array per row count. ORT reads and writes the bound memory at every run, so a feed rewritten
    in place (tokens, positions) needs no binding. Rebinding every feed and wrapping every output
    as a new OrtValue at every step cost 165 us of a 16-row step (recipe translator; stop 38 in
    reports/translation-benchmark.md).

    A feed is known by the array that owns its memory (a view's `base`), its shape and its name:
    the feeds are each layer's block of the batch's first rows (`layer_feeds`), so these fix
    the memory. (Reading a view's address, `__array_interface__`, costs 3 us a feed.) The bound
    OrtValue keeps its array, so that owner stays alive and no other array takes its id.

    Not thread-safe: one binding per thread that steps. The logits returned are overwritten
    by the next `run` of the same row count."""

    def __init__(self, decoder: ort.InferenceSession, written: tuple[str, ...]) -> None:
        self._decoder = decoder
        self._written = written
        self._binding = decoder.io_binding()
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}  # name -> (owner's id, shape)
        self._values: dict[str, ort.OrtValue] = {}  # what is bound (keeps the memory alive)
        self._logits = np.zeros((0, 0), np.float32)
        self._vocabulary = _logits_width(decoder)

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """One step over `feeds` (contiguous arrays, as `layer_feeds` gives) -> logits."""
        for name, array in feeds.items():
            owner = array.base if array.base is not None else array
            key = (id(owner), array.shape)
            if self._bound.get(name) == key:
                continue
            value = ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory
            self._binding.bind_ortvalue_input(name, value)
            if name.startswith(self._written):
                self._binding.bind_ortvalue_output(f"new_{name}", value)
            self._bound[name], self._values[name] = key, value
        rows = len(feeds["tokens"])
        if self._logits.shape[0] != rows:
            self._logits = np.empty((rows, self._vocabulary), np.float32)
            self._values["logits"] = ort.OrtValue.ortvalue_from_numpy(self._logits)
            self._binding.bind_ortvalue_output("logits", self._values["logits"])
        self._decoder.run_with_iobinding(self._binding)
        return self._logits


def _logits_width(decoder: ort.InferenceSession) -> int:
    """The vocabulary size: the logits output's last dimension (a number in the graph)."""
    width = next(o for o in decoder.get_outputs() if o.name == "logits").shape[-1]
    if not isinstance(width, int):
        raise ValueError(f"the decoder's logits have no fixed vocabulary dimension ({width!r})")
    return width


def _layers_contiguous(cache: np.ndarray) -> bool:
    """Whether each layer cache[i] of [L, B, H, T, hd] is one C-contiguous block."""
    return cache.shape[0] == 0 or bool(cache[0].flags.c_contiguous)


def _grow_columns(cache: np.ndarray, columns: int) -> np.ndarray:
    """A contiguous copy of `cache` [L, B, H, T, hd] with `columns` >= T columns (left-aligned:
    the new ones at the end, zeros; no row reads them before writing)."""
    L, B, H, T, hd = cache.shape
    grown = np.zeros((L, B, H, columns, hd), cache.dtype)
    grown[:, :, :, :T] = cache
    return grown
