"""`python -m export classifier|nli|translator ...`, `... bench ...`, `... release|unpack ...`.

Exit codes: 0 exported, 1 a parity check failed (the numbers are printed, nothing was written
into the repository), 2 bad input (missing checkpoint, wrong task, existing version, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from export import bench, release
from export.parity import ParityError
from export.publish import PublishError
from model_src.cli import DefaultsHelpFormatter as Formatter
from model_src.cli import show_defaults
from model_src.common.options import from_args
from service.engines.translator_graphs import SELF_ATTENTION_KINDS


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="checkpoint directory (classifier/nli: also a Hugging Face "
        "BertForSequenceClassification directory; the subcommand says single texts or pairs)",
    )
    parser.add_argument("--repository", type=Path, required=True, help="model repository root")
    parser.add_argument("--name", help="model name in the repository (default by task)")
    parser.add_argument("--version", type=int, help="integer version (default: highest + 1)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads for the checks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for kind, what in (
        ("classifier", "text classifier"),
        ("nli", "sentence-pair (NLI) classifier"),
    ):
        p = sub.add_parser(kind, help=f"export a fine-tuned {what}", formatter_class=Formatter)
        _add_common(p)
        p.add_argument("--optimize", action="store_true", help="ORT transformer optimizer fusions")
        p.add_argument(
            "--quantize",
            choices=["int8"],
            help="int8 (CPU): static and dynamic candidates, the fastest inside the accuracy gate",
        )
        p.add_argument("--fp16", action="store_true", help="float16 weights/compute (CUDA)")
        p.add_argument("--dev", type=Path, help="labelled dev TSV for int8 accuracy checks")
        p.add_argument("--dev-limit", type=int, default=2000, help="first N dev rows (2000)")
        p.add_argument(
            "--calibration",
            type=Path,
            help="labelled TSV of training texts for static int8 (default: the checkpoint's "
            "recorded training file)",
        )
        p.add_argument("--calibration-limit", type=int, default=512, help="texts drawn (512)")
        p.add_argument(
            "--int8-candidates", nargs="+", metavar="NAME", help="int8 settings to try (all)"
        )
        p.add_argument(
            "--atol", type=float, default=1e-4, help="fp32 logits tolerance vs PyTorch (1e-4)"
        )
    p = sub.add_parser(
        "translator",
        help="export a Transformer translator (encoder + decoder)",
        formatter_class=Formatter,
    )
    _add_common(p)
    p.add_argument("--dev-src", type=Path, help="source sentences, one per line (parity)")
    p.add_argument(
        "--dev-ref", "--dev-tgt", type=Path, help="references for --dev-src (BLEU parity)"
    )
    p.add_argument("--dev-limit", type=int, default=200, help="first N dev sentences")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation default in config")
    p.add_argument("--beam-size", type=int, default=4, help="generation default in config")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8 encoder and decoder (CPU, static scales), else the decoder alone, whichever "
        "first passes the BLEU gate on --dev-src",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="source sentences for int8 calibration (default: the checkpoint's recorded "
        "training sources)",
    )
    p.add_argument("--calibration-limit", type=int, default=256, help="sentences drawn (256)")
    p.add_argument(
        "--self-attention",
        choices=SELF_ATTENTION_KINDS,
        help="the decoder's self-attention: group_query (ONNX Runtime's GroupQueryAttention over "
        "each row's own cache length; the default when the head size is a multiple of 8) or "
        "masked (plain ONNX ops over the longest row's cache; for fp32 on CUDA)",
    )
    bench.add_arguments(
        sub.add_parser(
            "bench", help="engine benchmark (PyTorch vs ONNX Runtime)", formatter_class=Formatter
        )
    )
    release.add_arguments(
        sub.add_parser(
            "release",
            help="pack the model repository into one verified archive",
            formatter_class=Formatter,
        )
    )
    release.add_unpack_arguments(
        sub.add_parser(
            "unpack",
            help="verify a release archive and unpack it as a repository",
            formatter_class=Formatter,
        )
    )
    for subparser in sub.choices.values():
        show_defaults(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Export checks and the benchmark alternate PyTorch and ONNX Runtime on the same cores. With
    # OpenMP's default active wait, PyTorch's idle threads spin; on a busy 2-core machine a tiny
    # forward pass then took ~0.6 s instead of ~2 ms. Passive waiting avoids that (ORT sessions
    # here are made with spinning off too). Read when torch loads, so it must be set before.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Root at WARNING: onnxruntime.quantization logs every tensor at INFO on the root logger.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("export").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command == "bench":
            return bench.run(args)
        if args.command in ("release", "unpack"):
            return release.run(args) if args.command == "release" else release.run_unpack(args)
        # Imported here, not above: they load torch, which reads OMP_WAIT_POLICY when it loads.
        if args.command == "translator":
            from export import translator

            out = translator.run_export(from_args(translator.TranslatorExport, args))
        else:
            from export import classifier

            job = from_args(
                classifier.ClassifierExport,
                args,
                kind=args.command,
                tolerances=classifier.Tolerances(fp32_atol=args.atol),
            )
            out = classifier.run_export(job)
    except ParityError as err:
        print(f"error: parity check failed: {err.what}; nothing was written", file=sys.stderr)
        print(json.dumps(err.report, indent=2), file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, PublishError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(f"exported {out}")
    print(json.dumps({"precision": manifest["precision"], "parity": manifest["parity"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
