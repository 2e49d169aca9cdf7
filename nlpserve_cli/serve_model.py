"""`nlpserve serve`: `python -m service`, plus `--model DIR` to serve one checkpoint directly.

    nlpserve serve --model runs/sentiment            # an nlpserve checkpoint (task from it)
    nlpserve serve --model ./my-hf-bert --task nli   # a Hugging Face BertForSequenceClassification

The directory is exported once into a cache repository keyed by the sha256 of its files (and the
task, name and export options), then served like any repository; a later start with the same
files serves the cached export at once, without PyTorch. Every other option is the service's
(`python -m service --help`). Offline: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("nlpserve")

CACHE_ENV = "NLPSERVE_CACHE_DIR"
# model_src.classifier.tasks.TASKS says the same; the serving image has no model_src to ask.
TASK_OF_KIND = {"classifier": "text-classification", "nli": "text-pair-classification"}
KIND_OF_TASK = {v: k for k, v in TASK_OF_KIND.items()}
TRANSLATOR_FORMAT = "nlpserve-translator"
# Files that do not change what is served: the model card and training by-products.
IGNORED_FILES = {"README.md", "metrics.jsonl", "train_log.txt", "training_curve.png"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nlpserve"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlpserve serve",
        description="Serve a model repository (the service's options, below), or one checkpoint "
        "directory with --model: exported once into a cache keyed by its content, then served.",
        add_help=False,  # -h prints these options, then the service's
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="serve this checkpoint directory (nlpserve classifier/NLI/translator, or Hugging "
        "Face BertForSequenceClassification) instead of --model-repository",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASK_OF_KIND),
        default=None,
        help="single texts or pairs; default: the checkpoint's task, 'classifier' for an HF dir",
    )
    parser.add_argument("--name", default=None, help="model name; default by task (sentiment/nli)")
    parser.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ONNX Runtime transformer fusions in the export (default: on)",
    )
    parser.add_argument(
        "--quantize", choices=["int8"], default=None, help="dynamic int8 export (CPU)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where exports are kept (env {CACHE_ENV}; default: {default_cache_dir()})",
    )
    return parser


def content_key(directory: Path, options: dict[str, object]) -> str:
    """sha256 over the directory's files (relative names and bytes) and the export options."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.name in IGNORED_FILES or path.name.startswith("."):
            continue
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_kind(directory: Path, task: str | None) -> str:
    """classifier | nli | translator, from the checkpoint (our formats) or --task (HF)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; not a checkpoint directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("format") == TRANSLATOR_FORMAT:
        return "translator"
    own_task = config.get("task") if "format" in config else None
    if task is not None:
        if own_task is not None and TASK_OF_KIND[task] != own_task:
            raise ValueError(f"{directory} holds a {own_task!r} model, not --task {task}")
        return task
    return KIND_OF_TASK.get(str(own_task), "classifier")


def ensure_exported(args: argparse.Namespace) -> Path:
    """The cache repository holding args.model's export, exporting it on first use."""
    model = args.model.resolve()
    kind = checkpoint_kind(model, args.task)
    options = {
        "kind": kind,
        "name": args.name,
        "optimize": args.optimize,
        "quantize": args.quantize,
    }
    key = content_key(model, options)
    cache = args.cache_dir or Path(os.environ.get(CACHE_ENV) or default_cache_dir())
    repository = cache / key[:20] / "repository"
    if any(repository.glob("*/[0-9]*/manifest.json")):
        print(f"nlpserve: serving the cached export of {model} ({repository})", file=sys.stderr)
        return repository
    print(f"nlpserve: exporting {model} ({kind}) into {repository}", file=sys.stderr)
    # PyTorch only now, on a cache miss: the serving image can still serve cached exports.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see export.__main__
    try:
        from export.classifier import export_classifier
        from export.translator import export_translator
    except ImportError as err:
        raise RuntimeError(
            f"exporting {model} needs the train and export extras "
            f"(pip install 'nlpserve[train,export]'): {err}"
        ) from err
    from export.publish import PublishError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter
            if kind == "translator":
                export_translator(model, repository, name=args.name, version=1)
            else:
                export_classifier(
                    model,
                    repository,
                    name=args.name,
                    version=1,
                    kind=kind,
                    optimize=args.optimize,
                    quantize=args.quantize,
                )
    except (PublishError, OSError):  # OSError: its rename landed between our check and ours
        # Another process (a second replica on a shared cache) published version 1 of the same
        # files first; the publish is atomic, so what it wrote is complete.
        if not any(repository.glob("*/1/manifest.json")):
            raise
        print(f"nlpserve: {repository} was exported meanwhile; serving it", file=sys.stderr)
    return repository


def main(argv: Sequence[str] | None = None) -> int:
    # On use: the whole service app (uvicorn, FastAPI, gRPC) loads only when serving, not for
    # this module's cache and export helpers.
    from service.__main__ import build_parser as service_parser
    from service.__main__ import main as serve

    args, rest = build_parser().parse_known_args(argv)
    if args.help:
        build_parser().print_help()
        print("\nservice options (python -m service):\n")
        print(service_parser().format_help().split("\n\n", 1)[-1])
        return 0
    if args.model is None:
        return int(serve(rest) or 0)
    if any(a == "--model-repository" or a.startswith("--model-repository=") for a in rest):
        print("nlpserve serve: give --model or --model-repository, not both", file=sys.stderr)
        return 2
    # Root at WARNING: onnxruntime's optimizer and quantizer log every step at INFO on it.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("export").setLevel(logging.INFO)
    try:
        repository = ensure_exported(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"nlpserve serve: {err}", file=sys.stderr)
        return 2
    return int(serve(["--model-repository", str(repository), *rest]) or 0)
