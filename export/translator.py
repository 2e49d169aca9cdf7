"""Export a Transformer translator checkpoint as encoder.onnx + decoder.onnx (with K/V cache).

The graphs are traced by export.translator_graph to the interface service/engines/generation.py
(their consumer) defines. Parity (fp32, export.translator_parity, checked before anything reaches
the repository):
- greedy search on ONNX Runtime gives the same token ids as the PyTorch greedy decoder on every
  dev sentence (the first `dev_limit` lines of --dev-src, else the bundled samples);
- beam-4 BLEU on ONNX Runtime is within 0.5 of PyTorch's beam-4 BLEU against the references
  (--dev-ref); without references, both are scored against PyTorch's greedy output instead.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import provenance, publish, samples
from export.parity import require
from export.runtime import make_session
from export.torchscript import EXPORTER, OPSET
from export.translator_graph import export_graphs, self_attention_kind, with_eager_attention
from export.translator_int8 import calibration_feeds, int8_report, quantize_graph
from export.translator_parity import translation_parity
from model_src.common.model_card import numeric, recorded_run_card, write_model_card
from model_src.translator.checkpoint import load_translator
from model_src.translator.data import read_lines
from model_src.translator.tokenizer import TOKENIZER_FILE, decode, encode
from model_src.translator.transformer import Transformer
from service.engines.generation import OnnxGenerator
from service.engines.translator_graphs import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    decoder_inputs,
    decoder_outputs,
)
from service.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUE_DELAY_MS,
)
from service.repository import ModelConfig

logger = logging.getLogger(__name__)

PARITY_BEAM = 4
INT8_GRAPHS = ("encoder.onnx", "decoder.onnx")  # in calibration_feeds' order
# int8 tried in this order, the first inside the gate kept: both graphs, then the decoder alone
# (what a translation's time goes to)
INT8_ATTEMPTS = (("encoder.onnx", "decoder.onnx"), ("decoder.onnx",))


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
    quantize: str | None = None  # "int8": the weight MatMuls (export.translator_int8)
    int8_max_bleu_drop: float = 0.5  # the int8 gate: greedy and beam-4 BLEU vs fp32 ONNX
    calibration: Path | None = None  # int8 calibration sources; None: the recorded train_src
    calibration_limit: int = 256  # sentences drawn (seeded) from it
    self_attention: str | None = None  # the decoder's kind; None: export.translator_graph picks


def export_translator(checkpoint_dir: Path, repository: Path, **options: Any) -> Path:
    """Export one translator checkpoint; returns the new version directory. `options` are
    TranslatorExport's fields; None keeps a field's default."""
    given = {k: v for k, v in options.items() if v is not None}
    return run_export(TranslatorExport(Path(checkpoint_dir), Path(repository), **given))


def run_export(job: TranslatorExport) -> Path:
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
    self_attention = self_attention_kind(model, job.self_attention)
    max_length = int(ckpt.get("max_length", 128))
    name = job.name or "translator"
    version = publish.resolve_version(job.repository, name, job.version)
    config = ModelConfig.model_validate(
        {
            "name": name,
            "task": "translation",
            "max_length": max_length,
            "batching": publish.batching_config(job, max_length),
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
        export_graphs(model, stage, self_attention)
        export_s = time.perf_counter() - t0
        generator = OnnxGenerator(
            make_session(stage / "encoder.onnx", job.threads, spinning=False),
            make_session(stage / "decoder.onnx", job.threads, spinning=False),
        )
        detokenize = functools.partial(decode, tokenizer)
        report = translation_parity(
            model,
            generator,
            sources,
            detokenize,
            references,
            beam_size=PARITY_BEAM,  # the contract checks beam-4, whatever the served default
            max_new_tokens=job.max_new_tokens,
            length_penalty=job.length_penalty,
        )
        report["evaluated_on"] = str(job.dev_src) if job.dev_src else "bundled sample sentences"
        report["max_bleu_diff"] = job.max_bleu_diff
        require(report["greedy_identical"] == report["sentences"], "greedy token ids", report)
        require(report["beam_bleu_diff"] <= job.max_bleu_diff, "beam BLEU", report)
        quantization = None
        if job.quantize == "int8":
            int8_files, quantization = _int8_graphs(job, ckpt, tokenizer, generator, stage, work)
            kept = _int8_gate(job, generator, int8_files, sources, detokenize, references)
            quantization.update(kept)
            for graph in kept["graphs"]:
                shutil.copyfile(int8_files[graph], stage / graph)
        int8_graphs = quantization["graphs"] if quantization else []
        shutil.copyfile(
            job.checkpoint / ckpt.get("tokenizer", {}).get("file", TOKENIZER_FILE),
            stage / "tokenizer.json",
        )
        int8_names = " and ".join(g.removesuffix(".onnx") for g in int8_graphs)
        precision = f"int8 {int8_names}" if int8_graphs else "fp32"
        summary = f"ONNX export (encoder + decoder, {precision}) of `{job.checkpoint.resolve()}`."
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
                "precision": "int8" if int8_graphs else "fp32",
                "quantization": quantization,
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
                        "inputs": list(decoder_inputs(self_attention, cfg.n_decoder_layers)),
                        "outputs": list(decoder_outputs(self_attention, cfg.n_decoder_layers)),
                        "self_attention": self_attention,
                    },
                    "interface": "service/engines/generation.py module docstring",
                },
            },
        )
        return publish.publish(stage, job.repository, name, version, config)


def _int8_graphs(
    job: TranslatorExport,
    ckpt: dict[str, Any],
    tokenizer: Any,
    generator: OnnxGenerator,
    stage: Path,
    work: Path,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantise the staged encoder and decoder into work/: ({graph name: int8 file}, their record
    for the manifest, to which the caller adds what the gate kept)."""
    recorded = (ckpt.get("train_args") or {}).get("train_src")
    path = job.calibration or (Path(recorded) if recorded and Path(recorded).is_file() else None)
    texts = read_lines(path) if path else list(samples.SOURCE_SENTENCES)
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(texts), min(job.calibration_limit, len(texts)), replace=False))
    calibration = encode(tokenizer, [texts[i] for i in chosen], int(ckpt.get("max_length", 128)))
    t0 = time.perf_counter()
    feeds = dict(zip(INT8_GRAPHS, calibration_feeds(generator, calibration), strict=True))
    files = {graph: work / f"{Path(graph).stem}-int8.onnx" for graph in INT8_GRAPHS}
    nodes = {}
    for graph in INT8_GRAPHS:  # a work dir each: the quantiser caches its prepared graph there
        (work / Path(graph).stem).mkdir()
        nodes[graph] = quantize_graph(
            stage / graph, files[graph], feeds[graph], work / Path(graph).stem
        )
    return files, {
        "method": "static",
        "nodes": nodes,
        "calibration": {
            "source": str(path) if path else "bundled sample sentences",
            "sentences": len(calibration),
            "encoder_runs": len(feeds["encoder.onnx"]),
            "decoder_steps": len(feeds["decoder.onnx"]),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _int8_gate(
    job: TranslatorExport,
    generator: OnnxGenerator,
    int8_files: dict[str, Path],
    sources: list[list[int]],
    detokenize: Any,
    references: list[str] | None,
) -> dict[str, Any]:
    """Try the int8 graphs in INT8_ATTEMPTS' order against fp32 (export.translator_int8's gate);
    the first that passes is kept: {"graphs": kept (none: fp32), "gate": its report (else the
    last one's), "attempts": every attempt's}."""
    refs = references or detokenize(generator.generate(sources))
    fp32 = {"encoder.onnx": generator.encoder, "decoder.onnx": generator.decoder}
    int8 = {g: make_session(int8_files[g], job.threads, spinning=False) for g in INT8_GRAPHS}
    fp32_known: dict[str, float] = {}
    attempts = []
    for graphs in INT8_ATTEMPTS:
        encoder, decoder = (int8[g] if g in graphs else fp32[g] for g in INT8_GRAPHS)
        gate = int8_report(
            generator,
            OnnxGenerator(encoder, decoder),
            sources,
            detokenize,
            refs,
            job.max_new_tokens,
            job.int8_max_bleu_drop,
            fp32_known,
        )
        attempts.append({"graphs": list(graphs), "gate": gate})
        if gate["passed"]:
            return {"graphs": list(graphs), "gate": gate, "attempts": attempts}
        logger.warning("int8 %s failed its gate", " and ".join(graphs))
    logger.warning("no int8 graph passed its gate; the translator stays fp32")
    return {"graphs": [], "gate": attempts[-1]["gate"], "attempts": attempts}
