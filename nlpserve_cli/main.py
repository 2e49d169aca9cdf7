"""`nlpserve COMMAND ...`: dispatch to the module that owns each command, imported only then.

Nothing heavy is imported here, so `nlpserve serve` runs in the serving image, which has no
PyTorch: each command's module (and with it torch, onnxruntime or fastapi) loads on use. The
options and their --help are the owning module's own; this file holds the command names only.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module, function taking argv, argv prefix it expects, help)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "train": (
        "model_src.cli",
        "main",
        ("train",),
        "fine-tune a classifier / NLI model, or train the translator",
    ),
    "pretrain": ("model_src.cli", "main", ("pretrain",), "continued MLM+NSP pretraining"),
    "evaluate": (
        "model_src.cli",
        "main",
        ("evaluate",),
        "accuracy of a classifier checkpoint, or BLEU of a translator",
    ),
    "export": (
        "export.__main__",
        "main",
        (),
        "ONNX export (nlpserve or Hugging Face checkpoints) into a model repository",
    ),
    "serve": (
        "nlpserve_cli.serve_model",
        "main",
        (),
        "serve a model repository, or one checkpoint directory with --model",
    ),
    "bench": ("export.__main__", "main", ("bench",), "engine benchmark: PyTorch vs ONNX Runtime"),
    "bench-serving": (
        "loadtests.bench_serving",
        "main",
        (),
        "serving benchmark: nlpserve with and without batching vs a plain FastAPI app",
    ),
    "loadtest": (
        "loadtests.run",
        "main",
        (),
        "Locust load test against a server, with an SLO check",
    ),
    "tokenizer": ("model_src.cli", "main", ("tokenizer",), "train a WordPiece vocabulary"),
    "average": ("model_src.cli", "main", ("average",), "average checkpoints (a model soup)"),
}


# pyproject extras each command's package needs (the serving image has `serve` only).
EXTRAS_OF_PACKAGE = {
    "model_src": "train",
    "export": "train,export",
    "loadtests": "serve,dev",
    "nlpserve_cli": "serve",
}


def usage() -> str:
    lines = ["usage: nlpserve COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (*_, help_text) in COMMANDS.items()]
    lines += ["", "`nlpserve COMMAND --help` lists a command's options, defaults and env vars."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"nlpserve: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function, prefix, _ = COMMANDS[argv[0]]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:  # e.g. `nlpserve train` in the torch-free serving image
        extras = EXTRAS_OF_PACKAGE.get(module_name.split(".")[0], "train,export,serve,dev")
        print(
            f"nlpserve {argv[0]}: {err}; it needs pip install 'nlpserve[{extras}]'",
            file=sys.stderr,
        )
        return 2
    return int(getattr(module, function)([*prefix, *argv[1:]]) or 0)
