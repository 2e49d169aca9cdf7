"""Parity of an exported translator: ONNX Runtime against PyTorch on the same encoded sources.

Greedy search must give the same token ids; beam search is compared by corpus BLEU (sacreBLEU)
against the references, or against PyTorch's greedy output when there are none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sacrebleu.metrics import BLEU

from model_src.translator.data import pad
from model_src.translator.decoding import beam_search, greedy_decode
from model_src.translator.transformer import Transformer
from service.engines.generation import OnnxGenerator


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def translation_parity(
    model: Transformer,
    generator: OnnxGenerator,
    sources: list[list[int]],
    detokenize: Callable[[list[list[int]]], list[str]],
    references: list[str] | None,
    beam_size: int = 4,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Greedy ids and beam-search BLEU of ORT vs PyTorch on the same encoded sources."""
    mismatches: list[int] = []
    torch_greedy: list[list[int]] = []
    torch_beam: list[list[int]] = []
    ort_beam: list[list[int]] = []
    timings = {
        "pytorch_greedy_s": 0.0,
        "ort_greedy_s": 0.0,
        "pytorch_beam_s": 0.0,
        "ort_beam_s": 0.0,
    }
    # Batches in the given order (lengths mixed): exercises source padding and ragged finishing.
    for rows in _batches(len(sources), batch_size):
        chunk = [sources[i] for i in rows]
        src = pad(chunk)
        t0 = time.perf_counter()
        expected = greedy_decode(model, src, max_new_tokens)
        t1 = time.perf_counter()
        got = generator.greedy(src.numpy(), max_new_tokens)
        t2 = time.perf_counter()
        mismatches += [i for i, a, b in zip(rows, expected, got, strict=True) if a != b]
        torch_greedy += expected
        torch_beam += beam_search(model, src, beam_size, max_new_tokens, length_penalty)
        t3 = time.perf_counter()
        ort_beam += generator.beam_search(src.numpy(), beam_size, max_new_tokens, length_penalty)
        t4 = time.perf_counter()
        for key, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            timings[key] += dt
    torch_text, ort_text = detokenize(torch_beam), detokenize(ort_beam)
    report: dict[str, Any] = {
        "sentences": len(sources),
        "greedy_identical": len(sources) - len(mismatches),
        "greedy_mismatched_indices": mismatches[:20],
        "beam_size": beam_size,
        "beam_identical_ids": sum(a == b for a, b in zip(torch_beam, ort_beam, strict=True)),
        **{k: round(v, 3) for k, v in timings.items()},
    }
    if references is None:
        # No references given: score both against PyTorch's greedy output instead, so the check
        # keeps its form (ORT beam BLEU within the bound of PyTorch beam BLEU).
        references = detokenize(torch_greedy)
        report["bleu_references"] = "PyTorch greedy output (no reference file given)"
    bleu = BLEU()
    torch_bleu = bleu.corpus_score(torch_text, [references]).score
    ort_bleu = bleu.corpus_score(ort_text, [references]).score
    report.update(
        beam_bleu_pytorch=round(torch_bleu, 2),
        beam_bleu_ort=round(ort_bleu, 2),
        beam_bleu_diff=round(abs(torch_bleu - ort_bleu), 3),
        bleu_signature=str(bleu.get_signature()),
    )
    return report
