"""Limits and batching defaults, declared once: the request schemas, the inference path's checks,
the model repository's config, the batcher and export's defaults all read them from here."""

from __future__ import annotations

# Beam search work and memory grow with the beam; gains stop well before 16 (Multi30k: 4).
MAX_BEAM_SIZE = 16
# A decode budget per request: bounds one request's share of the translator's step loop.
MAX_NEW_TOKENS = 1024

DEFAULT_MAX_BATCH_SIZE = 32  # sequences per batch
DEFAULT_MAX_BATCH_TOKENS = 8192  # padded tokens per batch: len(batch) * longest sequence
# 0: on a CPU the engine takes what is queued as soon as it is free, and batches grow while it
# is busy; a few ms pays off only where bigger batches are nearly free (a GPU).
DEFAULT_MAX_QUEUE_DELAY_MS = 0.0
