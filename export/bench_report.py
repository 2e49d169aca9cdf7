"""The engine benchmark's report: the goals as measured ratios, and the markdown tables.

Reads only the result dict `export.bench.run` builds (also written as JSON next to the report).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from export.int8_choice import attempts_table


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, as ratios measured in this run (one row per checked cell)."""
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
    lines += _classifier_section(result)
    lines += _translator_section(result)
    if result["goals"]:
        lines += ["## Goals (ratios from this run)", ""]
        lines += _table(GOAL_COLUMNS, (_yes_no(g, "met") for g in result["goals"]))
    lines.append(f"Total benchmark time: {result['seconds']} s.")
    return "\n".join(lines) + "\n"


def _section_head(title: str, section: str, result: dict[str, Any]) -> list[str]:
    """'## Title', then 'Checkpoint: `...` (how the default was made)' for the caller to go on."""
    default = result.get(f"{section}_default")
    return [
        f"## {title}",
        "",
        f"Checkpoint: `{result[section]['checkpoint']}`" + (f" ({default})" if default else ""),
    ]


# Report tables: (column header, format of a cell's fields).
Columns = tuple[tuple[str, str], ...]
CLASSIFIER_COLUMNS: Columns = (
    ("engine", "{engine}"), ("B", "{batch}"), ("T", "{seq_len}"), ("seq/s", "{seq_per_s:.1f}"),
    ("best seq/s", "{best_seq_per_s:.1f}"), ("p50 ms", "{p50_ms:.2f}"),
    ("p90 ms", "{p90_ms:.2f}"), ("p99 ms", "{p99_ms:.2f}"), ("GFLOP/s", "{gflops:.1f}"),
    ("GEMM", "{gemm_gflops:.0f}"), ("roofline", "{roofline:.0%}"),
)  # fmt: skip
TRANSLATOR_COLUMNS: Columns = (
    ("engine", "{engine}"), ("search", "{search}"), ("cache", "{cache}"), ("tokens", "{tokens}"),
    ("seconds", "{seconds:.3f}"), ("tokens/s", "{tokens_per_s:.1f}"),
    ("best tokens/s", "{best_tokens_per_s:.1f}"), ("GFLOP/s", "{gflops:.2f}"),
    ("GEMM", "{gemm_gflops:.0f}"), ("roofline", "{roofline:.1%}"),
)  # fmt: skip
GOAL_COLUMNS: Columns = (
    ("goal", "{goal}"),
    ("measured", "{measured:.2f}"),
    ("target", "{target}"),
    ("met", "{met}"),
)


def _table(columns: Columns, rows: Iterable[dict[str, Any]]) -> list[str]:
    """A markdown table, one row per dict, then a blank line."""
    return [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell.format(**row) for _, cell in columns) + " |" for row in rows),
        "",
    ]


def _yes_no(row: dict[str, Any], key: str) -> dict[str, Any]:
    return {**row, key: "yes" if row[key] else "no"}


def _classifier_section(result: dict[str, Any]) -> list[str]:
    cls = result.get("classifier")
    if not cls:
        return []
    enc, models = cls["encoder"], cls["models"]
    lines = _section_head("Classifier", "classifier", result)
    lines[-1] += (
        f"; encoder hidden {enc['hidden_size']}, {enc['num_hidden_layers']} layers, "
        f"{enc['num_attention_heads']} heads. Full batches of B sequences of exactly T tokens."
    )
    lines += [
        "",
        "Matmul MFLOP per sequence: "
        + ", ".join(f"T{t}: {v:.0f}" for t, v in cls["mflop_per_sequence"].items()),
        "",
    ]
    if "int8_settings" in models:
        p = models["int8_parity"]
        lines += [
            f"int8 settings chosen by the exporter: `{models['int8_settings']}` "
            f"(label agreement with fp32 {p['label_agreement']:.3f} on {p['texts']} texts"
            + (
                f", accuracy drop {p['accuracy_drop_points']:.2f} points"
                if "accuracy_drop_points" in p  # measured only when the dev set has labels
                else ""
            )
            + ").",
            "",
        ]
    if "int8_attempts" in models:
        lines += attempts_table(models["int8_attempts"], models.get("int8_speed"))
    return lines + _table(CLASSIFIER_COLUMNS, cls["cells"])


def _translator_section(result: dict[str, Any]) -> list[str]:
    tr = result.get("translator")
    if not tr:
        return []
    mc = tr["model"]
    lines = _section_head("Translator", "translator", result)
    lines[-1] += (
        f"; d_model {mc['d_model']}, {mc['n_encoder_layers']}+{mc['n_decoder_layers']} layers, "
        f"vocabulary {mc['vocab_size']}. One batch of {tr['sentences']} sentences "
        f"(mean {tr['mean_source_tokens']:.1f} source tokens), "
        f"up to {tr['max_new_tokens']} new tokens each."
    )
    cells = [_yes_no(c, "cache") for c in tr["cells"]]
    return [*lines, "", *_table(TRANSLATOR_COLUMNS, cells)]


def _fmt_load(load: Any) -> str:
    return "n/a" if not load else ", ".join(f"{x:.1f}" for x in load)


def ratio(
    cells: list[dict[str, Any]], num: str, den: str, batch: int, seq_len: int
) -> float | None:
    """Best seq/s of engine `num` over engine `den` in one cell (None if either is missing)."""
    found = {
        c["engine"]: c["best_seq_per_s"]
        for c in cells
        if c["batch"] == batch and c["seq_len"] == seq_len
    }
    if num in found and den in found:
        return found[num] / found[den]
    return None
