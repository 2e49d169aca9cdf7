"""The command line of model_src: one argparse tree, feature modules imported only when used.

Each feature module exposes `add_arguments(parser)` and `run(args) -> int`, so this file holds
the command names and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command path -> (module, add-arguments function, run function, help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    ("train", "classifier"): (
        "model_src.classifier.train",
        "add_arguments",
        "run",
        "fine-tune BERT on single texts (sentiment)",
    ),
    ("train", "nli"): (
        "model_src.classifier.train",
        "add_arguments",
        "run",
        "fine-tune BERT on premise/hypothesis pairs",
    ),
    ("train", "translator"): (
        "model_src.translator.train",
        "add_arguments",
        "run",
        "train the seq2seq translator",
    ),
    ("pretrain",): (
        "model_src.pretrain.train",
        "add_arguments",
        "run",
        "continued MLM+NSP pretraining on raw text",
    ),
    ("evaluate",): (
        "model_src.classifier.evaluate",
        "add_arguments",
        "run",
        "accuracy, macro-F1 and confusion matrix",
    ),
    ("evaluate", "translator"): (
        "model_src.translator.evaluate",
        "add_arguments",
        "run",
        "BLEU and chrF of a translator",
    ),
    ("tokenizer", "train"): (
        "model_src.bert.tokenization",
        "add_train_arguments",
        "run_train",
        "train a WordPiece vocabulary",
    ),
    ("average",): (
        "model_src.average",
        "add_arguments",
        "run",
        "average compatible checkpoints' weights (a model soup)",
    ),
    ("shrink",): (
        "model_src.classifier.shrink",
        "add_arguments",
        "run",
        "a shallower student from alternate layers of a fine-tuned classifier",
    ),
    ("sample-data",): (
        "model_src.sample_data",
        "add_arguments",
        "run",
        "write the demo/test sample data",
    ),
}


def _resolve(argv: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """Longest command path that prefixes argv (so `evaluate translator` beats `evaluate`)."""
    for length in (2, 1):
        path = tuple(argv[:length])
        if path in COMMANDS:
            return path, list(argv[length:])
    return (), list(argv)


def _usage(group: str | None = None) -> str:
    lines = ["usage: python -m model_src COMMAND [options]", "", "commands:"]
    for path, (_, _, _, help_text) in COMMANDS.items():
        if group is None or path[0] == group:
            lines.append(f"  {' '.join(path):<22} {help_text}")
    lines.append("\n`python -m model_src COMMAND --help` lists a command's options.")
    return "\n".join(lines)


def _worth_showing(default: object) -> bool:
    """False for no value, a suppressed one, a flag that is off, an empty list (`is`, not `==`:
    a default of 0 is worth showing, and 0 == False)."""
    return not (default is None or default is argparse.SUPPRESS or default is False) and (
        default not in ([], ())
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states a default or
    there is nothing to state (required, None, off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.required or not _worth_showing(action.default):
            return text
        return f"{text} (default: %(default)s)".strip()


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """argparse prints no help line, so no default, for options without help text: give them one."""
    for action in parser._actions:
        if action.help is None and _worth_showing(action.default):
            action.help = "(default: %(default)s)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    path, rest = _resolve(argv)
    if (
        not path
        and argv[0:1] in (["train"], ["tokenizer"])
        and argv[1:2] in ([], ["-h"], ["--help"])
    ):
        # `train --help`: the group's commands (a bare `train` is a usage error)
        print(_usage(argv[0]), file=sys.stdout if argv[1:] else sys.stderr)
        return 0 if argv[1:] else 2
    if not path:
        print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, add_name, run_name, help_text = COMMANDS[path]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"python -m model_src {' '.join(path)}",
        description=help_text,
        formatter_class=DefaultsHelpFormatter,
    )
    if path[0] == "train" and path[1] in ("classifier", "nli"):
        parser.set_defaults(task=path[1])  # read by add_arguments: task-only options
    getattr(module, add_name)(parser)
    show_defaults(parser)
    args = parser.parse_args(rest)
    if path[0] == "train" and path[1] in ("classifier", "nli"):
        args.task = path[1]
    return int(getattr(module, run_name)(args))
