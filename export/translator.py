"""Export a Transformer translator checkpoint as encoder.onnx + decoder.onnx (with K/V cache).

The graphs' interface is defined in service/engines/generation.py (their consumer). The encoder
graph also computes every decoder layer's cross-attention keys/values, so the per-step decoder
only projects the new token and attends over caches: neither the source nor the target prefix is
ever recomputed.

Parity (fp32, checked before anything reaches the repository):
- greedy search on ONNX Runtime gives the same token ids as the PyTorch greedy decoder on every
  dev sentence (the first `dev_limit` lines of --dev-src, else the bundled samples);
- beam-4 BLEU on ONNX Runtime is within 0.5 of PyTorch's beam-4 BLEU against the references
  (--dev-ref); without references, both are scored against PyTorch's greedy output instead.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export import provenance, publish, samples, torchscript
from export.parity import ParityError, require
from export.runtime import make_session
from export.torchscript import EXPORTER, OPSET
from model_src.common.model_card import numeric, recorded_run_card, write_model_card
from model_src.translator.transformer import Transformer
from service.engines.generation import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    OnnxGenerator,
)
from service.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUE_DELAY_MS,
)
from service.repository import ModelConfig

logger = logging.getLogger(__name__)

PARITY_BEAM = 4


class EncoderGraph(nn.Module):
    """src_ids -> memory_mask, cross_k, cross_v (the encoder plus the cross-attention K/V)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory, memory_mask = self.model.encode(src_ids)  # (B,S,D), (B,S)
        cross_k, cross_v = self.model.cross_kv(memory)  # (L,B,H,S,hd) each
        return memory_mask, cross_k, cross_v


class DecoderStepGraph(nn.Module):
    """One decoding step with the self-attention cache in and out (Transformer.decode_step);
    the self-attention mask lets rows with different cache lengths share a step."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        tokens: torch.Tensor,
        position: torch.Tensor,
        memory_mask: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        self_k: torch.Tensor,
        self_v: torch.Tensor,
        self_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode_step(
            tokens, position, memory_mask, cross_k, cross_v, self_k, self_v, self_mask
        )


def with_eager_attention(model: Transformer) -> Transformer:
    """The same Transformer rebuilt on the explicit matmul-softmax attention path."""
    eager = Transformer(dataclasses.replace(model.config, attention="eager"))
    eager.load_state_dict(model.state_dict())
    return eager.eval()


def export_graphs(model: Transformer, out_dir: Path) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx for `model` (a Transformer) into out_dir."""
    cfg = model.config
    L, H = cfg.n_decoder_layers, cfg.n_heads
    hd = cfg.d_model // H
    B, S, t = 2, 5, 3  # example sizes; every one of them is a dynamic axis in the graphs
    src = torch.full((B, S), cfg.eos_id, dtype=torch.long)
    src[1, -2:] = cfg.pad_id  # a padded row, so the mask path is traced
    encoder_path, decoder_path = out_dir / "encoder.onnx", out_dir / "decoder.onnx"
    torchscript.export(
        EncoderGraph(model),
        (src,),
        encoder_path,
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        {
            "src_ids": {0: "batch", 1: "src_len"},
            "memory_mask": {0: "batch", 1: "src_len"},
            "cross_k": {1: "batch", 3: "src_len"},
            "cross_v": {1: "batch", 3: "src_len"},
        },
    )
    with torch.no_grad():
        memory_mask, cross_k, cross_v = EncoderGraph(model)(src)
    step_args = (
        torch.full((B,), 5, dtype=torch.long),  # tokens
        torch.full((B,), t, dtype=torch.long),  # position
        memory_mask,
        cross_k,
        cross_v,
        torch.randn(L, B, H, t, hd),  # self_k: a non-empty past so its axis is traced as dynamic
        torch.randn(L, B, H, t, hd),
        torch.ones(B, t + 1, dtype=torch.bool),  # self_mask: every cached position visible
    )
    torchscript.export(
        DecoderStepGraph(model),
        step_args,
        decoder_path,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        {
            "tokens": {0: "batch"},
            "position": {0: "batch"},
            "memory_mask": {0: "batch", 1: "src_len"},
            "cross_k": {1: "batch", 3: "src_len"},
            "cross_v": {1: "batch", 3: "src_len"},
            "self_k": {1: "batch", 3: "past"},
            "self_v": {1: "batch", 3: "past"},
            "self_mask": {0: "batch", 1: "past_plus_one"},
            "logits": {0: "batch"},
            "new_self_k": {1: "batch", 3: "past_plus_one"},
            "new_self_v": {1: "batch", 3: "past_plus_one"},
        },
    )
    _set_metadata(
        decoder_path,
        {
            "pad_id": cfg.pad_id,
            "sos_id": cfg.sos_id,
            "eos_id": cfg.eos_id,
            "max_positions": cfg.max_positions,
            "num_layers": L,
            "num_heads": H,
            "head_dim": hd,
        },
    )
    return encoder_path, decoder_path


def _set_metadata(path: Path, values: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: str(v) for k, v in values.items()})
    onnx.save(model, str(path))


# --- parity ------------------------------------------------------------------------------------


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def translation_parity(
    model: Transformer,
    generator: OnnxGenerator,
    sources: list[list[int]],
    detokenize: Any,
    references: list[str] | None,
    beam_size: int = 4,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Greedy ids and beam-search BLEU of ORT vs PyTorch on the same encoded sources."""
    from sacrebleu.metrics import BLEU

    from model_src.translator.data import pad
    from model_src.translator.decoding import beam_search, greedy_decode

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


# --- the export job ------------------------------------------------------------------------------


@dataclass
class TranslatorExport:
    checkpoint: Path
    repository: Path
    name: str | None = None  # default "translator"
    version: int | None = None
    dev_src: Path | None = None  # source sentences, one per line
    dev_ref: Path | None = None  # references, line-aligned with dev_src (BLEU parity)
    dev_limit: int = 200  # the parity contract: 200 dev sentences
    threads: int | None = None
    beam_size: int = 4  # generation defaults written to the model's config.json
    max_new_tokens: int = 128
    length_penalty: float = 1.0
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    max_bleu_diff: float = 0.5


def export_translator(
    checkpoint_dir: Path,
    repository: Path,
    name: str | None = None,
    version: int | None = None,
    dev_src: Path | None = None,
    dev_ref: Path | None = None,
    **options: Any,
) -> Path:
    """Export one translator checkpoint; returns the new version directory."""
    job = TranslatorExport(
        Path(checkpoint_dir),
        Path(repository),
        name=name,
        version=version,
        dev_src=dev_src,
        dev_ref=dev_ref,
        **{k: v for k, v in options.items() if v is not None},
    )
    return run_export(job)


def run_export(job: TranslatorExport) -> Path:
    from model_src.translator.checkpoint import load_translator
    from model_src.translator.data import read_lines
    from model_src.translator.tokenizer import TOKENIZER_FILE, decode, encode

    if not (job.checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{job.checkpoint}: not a checkpoint directory (no config.json)")
    loaded, ckpt, tokenizer = load_translator(job.checkpoint)
    if not isinstance(loaded, Transformer):
        raise ValueError(
            f"{job.checkpoint} is a {ckpt.get('arch')!r} translator; only the Transformer is "
            "exported (its decoder step carries the key/value cache the serving loop needs)"
        )
    model = with_eager_attention(loaded)
    cfg = model.config
    max_length = int(ckpt.get("max_length", 128))
    name = job.name or "translator"
    version = publish.resolve_version(job.repository, name, job.version)
    config = ModelConfig.model_validate(
        {
            "name": name,
            "task": "translation",
            "max_length": max_length,
            "batching": {
                "max_batch_size": job.max_batch_size,
                "max_batch_tokens": max(job.max_batch_tokens, max_length),
                "max_queue_delay_ms": job.max_queue_delay_ms,
            },
            "generation": {
                "beam_size": job.beam_size,
                "max_new_tokens": job.max_new_tokens,
                "length_penalty": job.length_penalty,
                "pad_token_id": cfg.pad_id,
                "bos_token_id": cfg.sos_id,
                "eos_token_id": cfg.eos_id,
            },
        }
    )

    if job.dev_src is not None:
        texts = read_lines(job.dev_src)[: job.dev_limit]
        references = read_lines(job.dev_ref)[: job.dev_limit] if job.dev_ref else None
    else:
        texts, references = list(samples.SOURCE_SENTENCES), None
    sources = encode(tokenizer, texts, max_length)

    with publish.staging_dir() as work:
        stage = work / "version"
        stage.mkdir()
        t0 = time.perf_counter()
        export_graphs(model, stage)
        export_s = time.perf_counter() - t0
        generator = OnnxGenerator(
            make_session(stage / "encoder.onnx", job.threads, spinning=False),
            make_session(stage / "decoder.onnx", job.threads, spinning=False),
        )
        report = translation_parity(
            model,
            generator,
            sources,
            lambda ids: decode(tokenizer, ids),
            references,
            beam_size=PARITY_BEAM,  # the contract checks beam-4, whatever the served default
            max_new_tokens=job.max_new_tokens,
            length_penalty=job.length_penalty,
        )
        report["evaluated_on"] = str(job.dev_src) if job.dev_src else "bundled sample sentences"
        report["max_bleu_diff"] = job.max_bleu_diff
        require(report["greedy_identical"] == report["sentences"], "greedy token ids", report)
        require(report["beam_bleu_diff"] <= job.max_bleu_diff, "beam BLEU", report)
        shutil.copyfile(
            job.checkpoint / ckpt.get("tokenizer", {}).get("file", TOKENIZER_FILE),
            stage / "tokenizer.json",
        )
        summary = f"ONNX export (encoder + decoder, fp32) of `{job.checkpoint.resolve()}`."
        card = recorded_run_card(
            name,
            "translation",
            "translation",
            summary,
            ckpt,
            {**numeric(ckpt.get("best")), **numeric(report)},
            "onnx",
        )
        write_model_card(stage / "README.md", card)
        publish.write_manifest(
            stage,
            {
                "opset": OPSET,
                "exporter": EXPORTER,
                "source_checkpoint": str(job.checkpoint.resolve()),
                "task": "translation",
                "precision": "fp32",
                "quantization": None,
                "optimizations": None,
                "parity": {"fp32_vs_pytorch": report},
                "provenance": provenance.record(job.checkpoint, ckpt),
                "export_seconds": round(export_s, 2),
                "graphs": {
                    "encoder.onnx": {
                        "inputs": list(ENCODER_INPUTS),
                        "outputs": list(ENCODER_OUTPUTS),
                    },
                    "decoder.onnx": {
                        "inputs": list(DECODER_INPUTS),
                        "outputs": list(DECODER_OUTPUTS),
                    },
                    "interface": "service/engines/generation.py module docstring",
                },
            },
        )
        return publish.publish(stage, job.repository, name, version, config)


__all__ = ["ParityError", "export_graphs", "export_translator", "translation_parity"]
