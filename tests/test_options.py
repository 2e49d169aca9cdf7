"""Command-line options generated from config dataclasses (model_src.common.options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_src.common.options import OptionError, add_options, from_args, option


@dataclass(kw_only=True)
class Inner:
    level: int = option(2, "a nested option", group="inner")


@dataclass(kw_only=True)
class Config:
    files: tuple[Path, ...] = option(help="one or more files")
    out: Path = option(help="where")
    steps: int = option(10, "how many", minimum=1)
    rate: float | None = option(None, "unset by default")
    fast: bool = option(False, "a switch")
    header: bool = option(True, "turn it off", flag="--no-header")
    names: tuple[str, ...] | None = option(None, "comma list", parse=lambda v: tuple(v.split(",")))
    kind: str = option("a", choices=("a", "b"))
    hidden: str = option("program", cli=False)
    inner: Inner = option(default_factory=Inner)


def parse(*argv: str) -> Config:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, Config)
    return from_args(Config, parser.parse_args(list(argv)))


def test_fields_become_options_with_their_types_and_defaults() -> None:
    cfg = parse("--files", "a.tsv", "b.tsv", "--out", "o", "--fast", "--no-header",
                "--names", "x,y", "--level", "5", "--rate", "0.5")  # fmt: skip
    assert cfg.files == (Path("a.tsv"), Path("b.tsv")) and cfg.out == Path("o")
    assert cfg.steps == 10 and cfg.rate == 0.5 and cfg.fast and not cfg.header
    assert cfg.names == ("x", "y") and cfg.inner == Inner(level=5) and cfg.hidden == "program"


def test_required_fields_are_required_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--out", "o")
    assert "the following arguments are required: --files" in capsys.readouterr().err


def test_minimum_and_choices_are_enforced() -> None:
    with pytest.raises(OptionError, match="--steps must be at least 1, got 0"):
        parse("--files", "a", "--out", "o", "--steps", "0")
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parse("--files", "a", "--out", "o", "--kind", "c")


def test_help_shows_the_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Config)
    text = parser.format_help()
    assert "how many (default: 10)" in text and "--hidden" not in text
    assert "inner:" in text  # the nested config's group
