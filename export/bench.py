"""`python -m export bench`: the engine benchmark (PyTorch eager vs ONNX Runtime).

Measures, in one run on one machine: the fp32 GEMM ceiling; classifier sequences/s and latency
percentiles for PyTorch eager, ORT fp32, ORT optimised and ORT int8 over a grid of batch sizes
and sequence lengths; translator target tokens/s for PyTorch and ORT, greedy and beam 4, with
and without the key/value cache. Every result is also given as a fraction of the GEMM roofline.
Writes a JSON file and a markdown report (export.bench_report: the tables, the machine, the
command).

This module is imported when `python -m export` builds its parser, before main() sets
OMP_WAIT_POLICY, which torch reads when it loads: whatever loads torch (the bench_* modules,
tiny, roofline, torch itself for its version) is imported inside the function that uses it.

    python -m export bench --out reports/engine-benchmark.md
    python -m export bench --quick --out /tmp/bench.md        # tiny models, seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from export.bench_report import goals, markdown

logger = logging.getLogger(__name__)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny models and grid (seconds)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/engine-benchmark.md"),
        help="markdown report; the JSON goes next to it (.json)",
    )
    parser.add_argument(
        "--classifier-checkpoint",
        type=Path,
        help="fine-tuned classifier (default: MiniLM-L6 + a linear probe head; "
        "--quick: a tiny random model)",
    )
    parser.add_argument(
        "--translator-checkpoint",
        type=Path,
        help="translator (default: random weights, the default Transformer size; "
        "--quick: a tiny random model)",
    )
    parser.add_argument("--dev", type=Path, help="labelled dev TSV for choosing int8 settings")
    parser.add_argument("--translator-src", type=Path, help="source sentences, one per line")
    parser.add_argument("--sentences", type=int, default=32, help="translator batch (32)")
    parser.add_argument("--batch-sizes", type=_ints, help="classifier batch sizes (1,8,32,64)")
    parser.add_argument("--seq-lens", type=_ints, help="classifier sequence lengths (16,64,128)")
    parser.add_argument("--max-new-tokens", type=int, help="translator tokens per sentence (32)")
    parser.add_argument("--min-time", type=float, help="seconds per measurement (1.0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for PyTorch and ONNX Runtime (all cores)",
    )
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--skip-translator", action="store_true")


def run(args: argparse.Namespace) -> int:
    # Idle threads must sleep, not spin, while engines take turns (see export/__main__.py).
    if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        logger.warning("torch was imported before OMP_WAIT_POLICY=PASSIVE could be set")
    from export import bench_classifier, bench_translator, roofline, samples, tiny  # torch

    quick = args.quick
    batch_sizes = args.batch_sizes or ([1, 4] if quick else [1, 8, 32, 64])
    seq_lens = args.seq_lens or ([16, 32] if quick else [16, 64, 128])
    min_time = args.min_time if args.min_time is not None else (0.05 if quick else 1.0)
    max_new = args.max_new_tokens or (6 if quick else 32)
    threads = args.threads
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": "python -m export bench " + shlex.join(_bench_argv()),
        "machine": machine_info(threads),
        "quick": quick,
        "thread_waiting": {
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "ort_allow_spinning": 0,
        },
    }
    with tempfile.TemporaryDirectory(prefix="nlpserve-bench-") as tmp:
        work = Path(tmp)
        n = 256 if quick else 1024
        gemm = roofline.gemm_gflops(threads, n=n, min_time=0.1 if quick else 1.0)
        result["gemm"] = gemm
        logger.info("fp32 GEMM: torch %.1f, ORT %.1f GFLOP/s", gemm["torch"], gemm["ort"])
        gemm_fns, gemm_flops = roofline.gemm_callables(threads, n)
        probe = (gemm_fns["ort"], gemm_flops)  # timed alongside every measurement

        if not args.skip_classifier:
            ckpt = args.classifier_checkpoint
            if ckpt is None:
                ckpt = (
                    tiny.tiny_classifier_checkpoint(work / "classifier")
                    if quick
                    else tiny.minilm_probe_checkpoint(work / "classifier")
                )
                result["classifier_default"] = "tiny random" if quick else "MiniLM-L6 + probe head"
            result["classifier"] = bench_classifier.run(
                ckpt, work / "cls", threads, probe, batch_sizes, seq_lens, min_time, args.dev
            )

        if not args.skip_translator:
            ckpt = args.translator_checkpoint
            if ckpt is None:
                size = {} if quick else {
                    "d_model": 256, "n_heads": 8, "n_encoder_layers": 3, "n_decoder_layers": 3,
                    "d_ff": 1024, "vocab_size": 8000, "max_positions": 512,
                }  # fmt: skip
                ckpt = tiny.tiny_translator_checkpoint(work / "translator", **size)
                result["translator_default"] = (
                    "tiny random" if quick else "random weights, default Transformer size"
                )
            texts = (
                _read_lines(args.translator_src, args.sentences)
                if args.translator_src
                else list(samples.SOURCE_SENTENCES)[: 4 if quick else args.sentences]
            )
            result["translator"] = bench_translator.run(
                ckpt, work / "tr", threads, probe, texts, max_new, min_time
            )
    result["goals"] = goals(result)
    result["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["seconds"] = round(time.perf_counter() - started, 1)

    out_md = Path(args.out)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json = out_md.with_suffix(".json")
    out_json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out_md.write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"wrote {out_md} and {out_json}")
    return 0


def _bench_argv() -> list[str]:
    """The options this run was given (for the report), whichever entry point parsed them."""
    argv = sys.argv[1:]
    return argv[argv.index("bench") + 1 :] if "bench" in argv else argv


def _read_lines(path: Path, limit: int) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines[:limit]


def machine_info(threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch  # not at the top: see the module docstring

    cpu, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", "", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    isa = [f for f in wanted if f" {f}" in flags]
    return {
        "cpu": cpu,
        "isa": isa,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
    }
