"""The exported translator's two graphs, encoder.onnx and decoder.onnx: names, shapes, kinds.

The export (`python -m export translator`) writes two graphs; their interface is defined here,
next to their only consumer (service.engines.generation's search loop), which the export imports
it from. B = batch (hypotheses), S = source length, L = decoder
layers, H = attention heads, hd = head size (d_model / H), V = vocabulary, t = positions already
decoded. Every axis named here is dynamic in the graphs.

encoder.onnx
    inputs   src_ids      int64   [B, S]          subword ids ending in <eos>, right-padded with
                                                   the pad id (0)
    outputs  memory_mask  bool    [B, S]          True on real source tokens
             cross_k      float32 [L, B, H, S, hd] every decoder layer's encoder-decoder keys,
             cross_v      float32 [L, B, H, S, hd] and values: computed once per source

decoder.onnx (one decoding step for every hypothesis)
    inputs   tokens       int64   [B]              the token at `position` (<sos> at position 0)
             position     int64   [B]              = t_b, the positions row b has decoded
             memory_mask  bool    [B, S]
             cross_k      float32 [L, B, H, S, hd]
             cross_v      float32 [L, B, H, S, hd]
             self_k       float32 [L, B, H, T, hd] self-attention keys/values of each row's
             self_v       float32 [L, B, H, T, hd] decoded positions (T = 0 at the first step: an
                                                   empty axis); T >= every t_b, layout below
             self_mask    bool    [B, T+1]         masked graphs only, see below
    outputs  logits       float32 [B, V]           next-token logits
             new_self_k   float32 [L, B, H, T', hd] the cache with each row's new position added
             new_self_v   float32 [L, B, H, T', hd]

Two kinds of decoder, named by the graph's `self_attention` metadata; both let rows at different
steps share one run (service.engines.decode_batch):
- "group_query": caches are left-aligned (row b's positions in columns 0..t_b-1; the step writes
  the new one at column t_b; T' = max(T, max t_b + 1)), and each layer's self-attention is ONNX
  Runtime's com.microsoft GroupQueryAttention, which reads row b's t_b + 1 columns only, so a
  short row does not pay for the longest row's columns. Its CPU kernel needs a head size that is
  a multiple of 8; its CUDA kernel runs float16 only (an fp32 graph on CUDA runs that node on CPU).
- "masked" (and graphs without the metadata that have `self_mask`): caches are right-aligned (row
  b's positions in the last t_b columns; T' = T + 1), `self_mask` is True on the columns a row may
  see (its own and the new one, index T); a row attends over all T + 1 columns, masked.
Graphs exported before step scheduling have neither: they decode request-level batches only.

The cache goes in and comes back grown by one position, so a step attends over the cached prefix
and never recomputes it. decoder.onnx carries metadata (ONNX `metadata_props`): pad_id, sos_id,
eos_id, max_positions (the sinusoidal table's rows: no position may reach it) and self_attention.
"""

from __future__ import annotations

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
ENCODER_INPUTS = ("src_ids",)
ENCODER_OUTPUTS = ("memory_mask", "cross_k", "cross_v")
STEP_INPUTS = ("tokens", "position", "memory_mask")
CACHES = ("cross_k", "cross_v", "self_k", "self_v")  # the state's arrays the step reads
SELF_CACHES = CACHES[2:]  # ... and returns grown, as new_<name>
GROUP_QUERY, MASKED = "group_query", "masked"  # decoder kinds (module docstring)
SELF_ATTENTION_KINDS = (GROUP_QUERY, MASKED)


def decoder_inputs(self_attention: str, layers: int) -> tuple[str, ...]:
    """decoder.onnx's input names for a decoder kind (group_query: a cache per layer)."""
    if self_attention == MASKED:
        return (*STEP_INPUTS, *CACHES, "self_mask")
    return (*STEP_INPUTS, *(f"{cache}_{i}" for cache in CACHES for i in range(layers)))


def decoder_outputs(self_attention: str, layers: int) -> tuple[str, ...]:
    """decoder.onnx's output names for a decoder kind."""
    if self_attention == MASKED:
        return ("logits", *(f"new_{cache}" for cache in SELF_CACHES))
    return ("logits", *(f"new_{cache}_{i}" for cache in SELF_CACHES for i in range(layers)))
