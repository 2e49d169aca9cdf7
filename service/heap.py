"""The server's heap after its models changed: freed memory back to the OS, and what stays
frozen out of the garbage collector's sight.

A loaded server holds about 100,000 tracked objects that live as long as it does (FastAPI,
pydantic's schemas, ONNX Runtime's bindings, the models' tokenizers). Python's full collection
walks all of them: under a closed loop of 32 translation users each one took about 100 ms of the
event loop, and the collector 7.0% of the server's CPU; frozen, 3.7%, and a full collection
about 4 ms (demo translator, 2-vCPU VM, reports/translation-benchmark.md, stop 36). `gc.freeze`
moves them to a generation that is never scanned, so collections walk only what requests
allocate.

`settle` runs after every repository sync that loaded versions and after every release
(service/registry.py): it unfreezes, collects what the change left as garbage, trims the C heap
and freezes again. Cyclic garbage of requests in
flight at that moment is frozen with the rest and never freed (a few kilobytes per model change).
"""

from __future__ import annotations

import ctypes
import gc


def settle() -> None:
    """Collect, hand freed heap pages back to the OS, and freeze what survives."""
    gc.unfreeze()
    gc.collect()
    _trim_c_heap()
    gc.freeze()


def _trim_c_heap() -> None:
    """glibc keeps freed memory for reuse, so without `malloc_trim` a retired version's
    sessions would stay in the RSS (measured: +24% after a MiniLM swap without it). A no-op where
    the C library has no malloc_trim (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
