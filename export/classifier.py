"""Export a fine-tuned classifier / NLI checkpoint into the model repository.

Pipeline (every step in a staging directory; the repository is touched only at the very end):
trace fp32 ONNX -> parity with PyTorch -> [optimise -> parity] -> [int8: every candidate scored
on the dev sample, the fastest inside the gate kept (export.int8_choice) | fp16 -> parity] ->
manifest -> publish. Any failed check raises `ParityError` and the
repository stays as it was.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from export import classifier_graph, hf_import, int8_choice, optimize, provenance, publish, samples
from export.parity import (
    LogitsFn,
    ParityError,
    ReferenceLogits,
    compare_logits,
    label_metrics,
    predict,
    require,
)
from export.runtime import classifier_logits, cuda_available, make_session
from export.text_inputs import (
    Text,
    encode,
    length_sorted_batches,
    read_dev_file,
)
from model_src.classifier.tasks import TASKS
from model_src.common.model_card import exported_card, write_model_card
from service.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUE_DELAY_MS,
)
from service.repository import ModelConfig

logger = logging.getLogger(__name__)

# Texts scored alone and in mixed batches by the int8 gate's batch-composition check.
BATCH_CHECK_TEXTS = 48

# The repository's model name when --name is not given, by classifier task (TASKS key).
DEFAULT_NAMES = {"classifier": "sentiment", "nli": "nli"}


@dataclass
class Tolerances:
    """Parity bounds a graph must meet before it is published."""

    fp32_atol: float = 1e-4  # logits vs PyTorch, fp32 and optimised fp32 graphs
    int8_min_agreement: float = 0.99  # labels equal to the fp32 graph's on the dev sample
    int8_max_drop_points: float = 0.3  # dev accuracy drop in percentage points
    # Largest change of a text's logits between scoring it alone and inside mixed batches. A
    # served answer must not depend on which requests shared its batch: static (calibrated)
    # scales stay within float rounding (0.0 measured); dynamic scales, taken from each batch's
    # range, moved logits by 1.4e-3 (tiny test model) to 0.23-1.0 (the real SST-2 model) and
    # flipped 1 label in 64 under load (reports/serving-benchmark.md).
    int8_max_batch_diff: float = 1e-4
    fp16_atol: float = 2e-2  # logits vs fp32: fp16 keeps ~3 significant digits
    fp16_min_agreement: float = 0.99  # labels equal to the fp32 graph's on the parity texts


@dataclass
class ClassifierExport:
    """One export job: what to read, where to write, and which variants to build."""

    checkpoint: Path
    repository: Path
    kind: str = "classifier"  # or "nli": the CLI subcommand, checked against the checkpoint
    name: str | None = None  # default: "sentiment" / "nli" by task
    version: int | None = None  # default: highest existing + 1
    optimize: bool = False
    quantize: str | None = None  # None | "int8"
    fp16: bool = False
    dev: Path | None = None  # labelled TSV for int8 accuracy (and extra parity texts)
    dev_limit: int = 2000  # first N dev rows: enough to resolve a 1-point drop, fast on 2 cores
    # int8 calibration texts (a labelled TSV; labels unused). None: the checkpoint's own training
    # file when it is still where training read it, else the bundled sample sentences.
    calibration: Path | None = None
    calibration_limit: int = 512  # texts drawn (seeded) from it
    int8_candidates: tuple[str, ...] | None = None  # names to try (None: every candidate)
    threads: int | None = None  # ORT intra-op threads for the checks (default: all cores)
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # batching defaults for the model's config.json
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    tolerances: Tolerances | None = None


def export_classifier(checkpoint_dir: Path, repository: Path, **options: Any) -> Path:
    """Export one classifier/NLI checkpoint; returns the new version directory. `options` are
    ClassifierExport's fields; None keeps a field's default."""
    given = {k: v for k, v in options.items() if v is not None}
    return run_export(ClassifierExport(Path(checkpoint_dir), Path(repository), **given))


def model_config(
    task: str, name: str, labels: list[str], max_length: int, job: ClassifierExport
) -> ModelConfig:
    """The repository's <name>/config.json, validated by the service's schema."""
    return ModelConfig.model_validate(
        {
            "name": name,
            "task": task,
            "labels": labels,
            "max_length": max_length,
            "batching": publish.batching_config(job, max_length),
        }
    )


def run_export(job: ClassifierExport) -> Path:
    tol = job.tolerances or Tolerances()
    if job.quantize not in (None, "int8"):
        raise ValueError(f"unsupported --quantize {job.quantize!r} (only int8)")
    if job.quantize and job.fp16:
        raise ValueError(
            "--quantize int8 and --fp16 are exclusive (int8 is for CPU, fp16 for CUDA)"
        )

    model, ckpt, checkpoint_tokenizer = classifier_graph.load_classifier(
        job.checkpoint, TASKS[job.kind].checkpoint_task
    )
    task = ckpt.get("task")
    expected = TASKS[job.kind]
    if task != expected.checkpoint_task:
        raise ValueError(
            f"{job.checkpoint} holds a {task!r} model, not {expected.checkpoint_task!r}"
        )
    labels: list[str] = list(ckpt["labels"])
    max_length = int(ckpt.get("max_length", 128))
    name = job.name or DEFAULT_NAMES[job.kind]
    # Everything that can be refused is checked before the (slow) export.
    version = publish.resolve_version(job.repository, name, job.version)
    config = model_config(task, name, labels, max_length, job)
    pair = expected.pairs
    model = classifier_graph.with_eager_attention(model)
    logger.info("exporting %s (%s) as %s version %d", job.checkpoint, task, name, version)

    tokenizer_json = hf_import.tokenizer_json(job.checkpoint, checkpoint_tokenizer)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()  # encode pads each batch to its longest member
    tokenizer.enable_truncation(max_length=max_length)
    parity_texts: list[Text] = list(samples.PAIRS if pair else samples.SENTENCES)
    dev = read_dev_file(job.dev, labels, pair, job.dev_limit) if job.dev else None
    if dev is not None:  # a slice of real dev texts widens the parity check cheaply
        parity_texts = list(dict.fromkeys([*parity_texts, *dev.texts[:64]]))

    def ort_fn(path: Path, provider: str = "cpu") -> LogitsFn:
        session = make_session(path, job.threads, provider, spinning=False)
        return lambda batch: classifier_logits(session, batch)

    parity: dict[str, Any] = {}
    optimizations: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    precision = "fp32"

    with publish.staging_dir() as work:
        fp32 = work / "fp32.onnx"
        classifier_graph.export_onnx(model, fp32, encode(tokenizer, parity_texts[:2]))
        reference = ReferenceLogits.compute(
            lambda batch: classifier_graph.torch_logits(model, batch), tokenizer, parity_texts
        )
        if ckpt.get("format") == hf_import.HF_FORMAT:  # our loading of it vs transformers'
            parity["pytorch_vs_transformers"] = hf_import.check_against_transformers(
                job.checkpoint, reference, tol.fp32_atol
            )
        parity["fp32_vs_pytorch"] = _check_fp32(reference, ort_fn(fp32), tol, "fp32 ONNX")
        current = fp32

        if job.optimize:
            optimized = work / "optimized.onnx"
            optimizations = optimize.optimize_bert(
                fp32,
                optimized,
                num_heads=int(ckpt["encoder"]["num_attention_heads"]),
                hidden_size=int(ckpt["encoder"]["hidden_size"]),
                use_gpu=job.fp16,
            )
            parity["optimized_vs_pytorch"] = _check_fp32(
                reference, ort_fn(optimized), tol, "optimised ONNX"
            )
            current = optimized

        if job.quantize == "int8":
            texts = dev.texts if dev is not None else parity_texts
            gold = dev.labels if dev is not None else None
            source, calibration = calibration_texts(job, ckpt, labels, pair)
            quantization, parity["int8"] = _quantize(
                current, work, tol, ort_fn, tokenizer, texts, gold, job, calibration
            )
            quantization["calibration"] = {"source": source, "texts": len(calibration)}
            parity["int8"]["evaluated_on"] = (
                str(job.dev) if job.dev else "bundled sample sentences (agreement only)"
            )
            current = work / "int8.onnx"
            precision = "int8"

        if job.fp16:
            fp16 = work / "fp16.onnx"
            details = optimize.convert_fp16(current, fp16)
            provider = "cuda" if cuda_available() else "cpu"
            fp32_reference = ReferenceLogits.compute(ort_fn(current), tokenizer, parity_texts)
            report = compare_logits(fp32_reference, ort_fn(fp16, provider))
            report.update(atol=tol.fp16_atol, provider=provider, reference="fp32 ONNX")
            parity["fp16_vs_fp32"] = report
            require(
                report["max_abs_diff"] <= tol.fp16_atol
                and report["label_agreement"] >= tol.fp16_min_agreement,
                "fp16 ONNX vs fp32",
                report,
            )
            precision = "fp16"
            optimizations = {**(optimizations or {}), "float16": details}
            current = fp16

        dev_metrics = None
        if dev is not None:  # the served graph's own dev scores, for the release's model card
            provider = "cuda" if job.fp16 and cuda_available() else "cpu"
            logits = predict(ort_fn(current, provider), tokenizer, dev.texts)
            dev_metrics = provenance.classification_scores(logits, dev.labels, labels, str(job.dev))

        stage = work / "version"
        stage.mkdir()
        shutil.copyfile(current, stage / "model.onnx")
        (stage / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        manifest_fields = {
            "opset": classifier_graph.OPSET,
            "exporter": classifier_graph.EXPORTER,
            "source_checkpoint": str(job.checkpoint.resolve()),
            "task": task,
            "precision": precision,
            "quantization": quantization,
            "optimizations": optimizations,
            "parity": parity,
            "dev_metrics": dev_metrics,
            "provenance": provenance.record(job.checkpoint, ckpt),
        }
        write_model_card(
            stage / "README.md", exported_card(name, task, labels, ckpt, manifest_fields)
        )
        publish.write_manifest(stage, manifest_fields)
        return publish.publish(stage, job.repository, name, version, config)


def _check_fp32(
    reference: ReferenceLogits, candidate: LogitsFn, tol: Tolerances, what: str
) -> dict[str, Any]:
    report = compare_logits(reference, candidate)
    report["atol"] = tol.fp32_atol
    require(report["max_abs_diff"] <= tol.fp32_atol, f"{what} logits vs PyTorch", report)
    return report


def calibration_texts(
    job: ClassifierExport, ckpt: dict[str, Any], labels: list[str], pair: bool
) -> tuple[str, list[Text]]:
    """(where from, texts) for static int8 calibration: --calibration, else the training file
    the checkpoint recorded (train_args.train[0]) when readable, else the sample sentences."""
    recorded = (ckpt.get("train_args") or {}).get("train") or []
    path = job.calibration or next((Path(p) for p in recorded[:1] if Path(p).is_file()), None)
    if path is None:
        return "bundled sample sentences", list(samples.PAIRS if pair else samples.SENTENCES)
    every = read_dev_file(path, labels, pair, None).texts
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(every), min(job.calibration_limit, len(every)), replace=False)
    return str(path), [every[i] for i in sorted(chosen)]


def _quantize(
    src: Path,
    work: Path,
    tol: Tolerances,
    ort_fn: Callable[[Path], LogitsFn],
    tokenizer: Tokenizer,
    texts: list[Text],
    gold: list[int] | None,
    job: ClassifierExport,
    calibration_texts: list[Text],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pick int8 settings: inside the gate (agreement, and dev accuracy when `gold` is given),
    then the fastest.

    Returns (the manifest's quantization record, the int8 parity numbers)."""
    reference = predict(ort_fn(src), tokenizer, texts)
    names = make_session(src, job.threads).get_inputs()
    calibration = [
        encode(tokenizer, chunk).feeds([i.name for i in names])
        for _, chunk in length_sorted_batches(tokenizer, calibration_texts, 16)
    ]

    def evaluate(candidate: Path) -> dict[str, Any]:
        logits_fn = ort_fn(candidate)
        metrics = label_metrics(reference, predict(logits_fn, tokenizer, texts), gold)
        metrics["batch_composition_max_abs_diff"] = int8_choice.batch_composition_diff(
            logits_fn, tokenizer, texts[:BATCH_CHECK_TEXTS]
        )
        return metrics

    def accept(m: dict[str, Any]) -> bool:
        ok = m["label_agreement"] >= tol.int8_min_agreement
        ok = ok and m["batch_composition_max_abs_diff"] <= tol.int8_max_batch_diff
        if "accuracy_drop_points" in m:
            ok = ok and m["accuracy_drop_points"] <= tol.int8_max_drop_points
        return bool(ok)

    chosen, attempts, fp32_rate = int8_choice.choose_int8(
        src,
        work / "int8.onnx",
        work,
        int8_choice.select_candidates(job.int8_candidates),
        calibration,
        evaluate,
        accept,
        lambda paths: int8_choice.measure_speeds(paths, job.threads),
    )
    tried = [a.to_json() for a in attempts]
    if chosen is None:
        raise ParityError(
            "no int8 setting kept accuracy",
            {
                "min_agreement": tol.int8_min_agreement,
                "max_drop_points": tol.int8_max_drop_points,
                "max_batch_diff": tol.int8_max_batch_diff,
                "fp32_seq_per_s": fp32_rate,
                "attempts": tried,
            },
        )
    static = chosen.candidate.method == "static"
    assert chosen.seq_per_s is not None and fp32_rate  # measured for every accepted candidate
    quantization = {
        "method": "onnxruntime.quantization."
        + ("quantize_static (QDQ)" if static else "quantize_dynamic"),
        "weights": "int8",
        "activations": "uint8, scales fixed by calibration"
        if static
        else "uint8, quantised dynamically per batch",
        "chosen": chosen.candidate.name,
        "settings": chosen.to_json()["settings"],
        "quantized_nodes": chosen.quantized_nodes,
        "speed": {
            "shapes": [list(s) for s in int8_choice.SPEED_SHAPES],
            "fp32_seq_per_s": fp32_rate,
            "int8_seq_per_s": chosen.seq_per_s,
            "speedup": chosen.seq_per_s / fp32_rate,
        },
        "attempts": tried,
    }
    parity = {
        **chosen.metrics,
        "reference": "fp32 ONNX (== PyTorch within the fp32 tolerance)",
        "min_agreement": tol.int8_min_agreement,
        "max_drop_points": tol.int8_max_drop_points if gold is not None else None,
        "max_batch_diff": tol.int8_max_batch_diff,
    }
    return quantization, parity


def logits_for_texts(model_path: Path, tokenizer: Tokenizer, texts: list[Text]) -> np.ndarray:
    """Convenience for tests/tools: fp32 logits of `texts` from an exported model file."""
    session = make_session(model_path)
    return classifier_logits(session, encode(tokenizer, texts))
