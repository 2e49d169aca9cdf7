"""`python -m export bench`: the engine benchmark (PyTorch eager vs ONNX Runtime).

Measures, in one run on one machine: the fp32 GEMM ceiling; classifier sequences/s and latency
percentiles for PyTorch eager, ORT fp32, ORT optimised and ORT int8 over a grid of batch sizes
and sequence lengths; translator target tokens/s for PyTorch and ORT, greedy and beam 4, with
and without the key/value cache. Every result is also given as a fraction of the GEMM roofline.
Writes a JSON file and a markdown report (the tables, the machine, the command).

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
    from export import bench_classifier, bench_translator, roofline, samples, tiny

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
    import torch

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


# --- goals and report ---------------------------------------------------------------------------


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, as ratios measured in this run (one row per checked cell)."""
    from export.bench_classifier import ratio

    rows: list[dict[str, Any]] = []
    cls = result.get("classifier")
    if cls:
        cells = cls["cells"]
        for batch, target in ((32, 1.3), (1, 2.5)):
            for seq_len in sorted({c["seq_len"] for c in cells}):
                r = ratio(cells, "ort-optimized", "pytorch-eager", batch, seq_len)
                if r is not None:
                    what = f"ORT optimised / PyTorch eager, B{batch} T{seq_len}"
                    rows.append(_goal(what, r, target))
        for c in cells:
            if c["engine"] == "ort-int8" and c["batch"] >= 8:
                r = ratio(cells, "ort-int8", "ort-optimized", c["batch"], c["seq_len"])
                if r is not None:
                    what = f"int8 / ORT optimised fp32, B{c['batch']} T{c['seq_len']}"
                    rows.append(_goal(what, r, 1.5))
        for c in cells:
            if c["engine"] in ("ort-fp32", "ort-optimized") and c["batch"] >= 8:
                what = f"{c['engine']} roofline fraction, B{c['batch']} T{c['seq_len']}"
                rows.append(_goal(what, c["roofline"], 0.8))
    tr = result.get("translator")
    if tr:
        speed = {
            (c["engine"], c["search"], c["cache"]): c["best_tokens_per_s"] for c in tr["cells"]
        }
        cached = speed.get(("ort", "greedy", True))
        uncached = speed.get(("pytorch", "greedy", False))
        if cached and uncached:
            what = "cached ORT greedy / uncached PyTorch greedy"
            rows.append(_goal(what, cached / uncached, 3.0))
    return rows


def _goal(what: str, value: float, target: float) -> dict[str, Any]:
    return {"goal": what, "measured": round(value, 3), "target": target, "met": value >= target}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Engine benchmark",
        "",
        f"Command: `{result['command']}`"
        + (" (quick mode: tiny models)" if result["quick"] else ""),
        "",
        f"Machine: {m['cpu']} ({', '.join(m['isa']) or 'no AVX2'}), "
        f"{m['logical_cpus']} logical CPUs, {m['threads']} threads used, "
        f"load average {_fmt_load(m['load_average'])} at the start and "
        f"{_fmt_load(result.get('load_average_end'))} at the end; Python {m['python']}, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}. "
        f"Idle threads sleep instead of spinning (OMP_WAIT_POLICY="
        f"{result['thread_waiting']['OMP_WAIT_POLICY']}, ORT allow_spinning=0): the engines "
        "take turns on the same cores.",
        "",
        "## fp32 GEMM ceiling",
        "",
        "| engine (measured before the runs) | GFLOP/s |",
        "|---|---|",
        f"| torch.mm {result['gemm']['n']}^3 | {result['gemm']['torch']:.1f} |",
        f"| ONNX Runtime MatMul {result['gemm']['n']}^3 | {result['gemm']['ort']:.1f} |",
        "",
        "Engines of one cell are timed round-robin (order rotated every round), interleaved with "
        f'an ONNX Runtime MatMul {result["gemm"]["n"]}^3 (column "GEMM", GFLOP/s), so all see '
        'the same machine load. "seq/s" and the latency percentiles come from all calls; '
        '"best" from the fastest call, the least disturbed on a shared machine. GFLOP/s, '
        "roofline (= GFLOP/s / GEMM) and the goal ratios use the fastest calls.",
        "",
    ]
    cls = result.get("classifier")
    if cls:
        enc = cls["encoder"]
        lines += [
            "## Classifier",
            "",
            f"Checkpoint: `{cls['checkpoint']}`"
            + (f" ({result['classifier_default']})" if result.get("classifier_default") else "")
            + f"; encoder hidden {enc['hidden_size']}, {enc['num_hidden_layers']} layers, "
            f"{enc['num_attention_heads']} heads. Full batches of B sequences of exactly T tokens.",
            "",
            "Matmul MFLOP per sequence: "
            + ", ".join(f"T{t}: {v:.0f}" for t, v in cls["mflop_per_sequence"].items()),
            "",
        ]
        if "int8_settings" in cls["models"]:
            p = cls["models"]["int8_parity"]
            lines += [
                f"int8 settings chosen by the exporter: `{cls['models']['int8_settings']}` "
                f"(label agreement with fp32 {p['label_agreement']:.3f} on {p['texts']} texts"
                + (
                    f", accuracy drop {p['accuracy_drop_points']:.2f} points"
                    if "accuracy_drop_points" in p
                    else ""
                )
                + ").",
                "",
            ]
        if "int8_attempts" in cls["models"]:
            from export.int8_choice import attempts_table

            lines += attempts_table(cls["models"]["int8_attempts"], cls["models"].get("int8_speed"))
        lines += [
            "| engine | B | T | seq/s | best seq/s | p50 ms | p90 ms | p99 ms | GFLOP/s | GEMM "
            "| roofline |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in cls["cells"]:
            lines.append(
                f"| {c['engine']} | {c['batch']} | {c['seq_len']} | {c['seq_per_s']:.1f} | "
                f"{c['best_seq_per_s']:.1f} | "
                f"{c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | {c['gflops']:.1f} | "
                f"{c['gemm_gflops']:.0f} | {100 * c['roofline']:.0f}% |"
            )
        lines.append("")
    tr = result.get("translator")
    if tr:
        mc = tr["model"]
        lines += [
            "## Translator",
            "",
            f"Checkpoint: `{tr['checkpoint']}`"
            + (f" ({result['translator_default']})" if result.get("translator_default") else "")
            + f"; d_model {mc['d_model']}, "
            f"{mc['n_encoder_layers']}+{mc['n_decoder_layers']} layers, "
            f"vocabulary {mc['vocab_size']}. One batch of {tr['sentences']} sentences "
            f"(mean {tr['mean_source_tokens']:.1f} source tokens), "
            f"up to {tr['max_new_tokens']} new tokens each.",
            "",
            "| engine | search | cache | tokens | seconds | tokens/s | best tokens/s | GFLOP/s "
            "| GEMM | roofline |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in tr["cells"]:
            lines.append(
                f"| {c['engine']} | {c['search']} | {'yes' if c['cache'] else 'no'} | "
                f"{c['tokens']} | "
                f"{c['seconds']:.3f} | {c['tokens_per_s']:.1f} | {c['best_tokens_per_s']:.1f} | "
                f"{c['gflops']:.2f} | "
                f"{c['gemm_gflops']:.0f} | "
                f"{100 * c['roofline']:.1f}% |"
            )
        lines.append("")
    if result["goals"]:
        lines += ["## Goals (ratios from this run)", ""]
        lines += ["| goal | measured | target | met |", "|---|---|---|---|"]
        for g in result["goals"]:
            met = "yes" if g["met"] else "no"
            lines.append(f"| {g['goal']} | {g['measured']:.2f} | {g['target']} | {met} |")
        lines.append("")
    lines.append(f"Total benchmark time: {result['seconds']} s.")
    return "\n".join(lines) + "\n"


def _fmt_load(load: Any) -> str:
    return "n/a" if not load else ", ".join(f"{x:.1f}" for x in load)
