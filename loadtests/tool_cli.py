"""What the one-server load tools (bench_protocols, bench_hot_swap) share: their common options,
and how they print their markdown report and keep it in --report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def tool_parser(prog: str, warmup_seconds: float) -> argparse.ArgumentParser:
    """--repository, --model, --users, --warmup-seconds (load before measuring) and --report;
    the tool adds its own options."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=warmup_seconds)
    parser.add_argument("--report", type=Path)
    return parser


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command as run, in backticks: the report's first line."""
    return f"`{' '.join([prog, *(argv or sys.argv[1:])])}`"


def print_report(lines: Sequence[str], report: Path | None) -> None:
    """Print the report; write it to `report` too when given."""
    text = "\n".join(lines)
    print(text)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text + "\n", encoding="utf-8")
