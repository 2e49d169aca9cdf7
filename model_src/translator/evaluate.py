"""`python -m model_src evaluate translator`: sacreBLEU and chrF of a checkpoint on a test set.

    python -m model_src evaluate translator --checkpoint runs/translator \\
        --src ../shared/data/multi30k/val.en --ref ../shared/data/multi30k/val.de --beam 4

Scores are corpus-level sacreBLEU (13a tokenisation, cased, detokenised output against the raw
references) and chrF; both are printed and written as JSON (default: DIR/eval_<src>_beam<N>.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sacrebleu.metrics import BLEU, CHRF
from tokenizers import Tokenizer

from model_src.common.training import pick_device
from model_src.translator.checkpoint import load_translator
from model_src.translator.data import read_parallel
from model_src.translator.decoding import Seq2Seq, generate
from model_src.translator.tokenizer import decode, encode

log = logging.getLogger(__name__)


def translate(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int,
    beam_size: int = 1,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Texts in, translations out (sources cut to max_length tokens, as in training)."""
    sources = encode(tokenizer, texts, max_length)
    hyps = generate(model, sources, beam_size, max_new_tokens, length_penalty, batch_size, device)
    return decode(tokenizer, hyps)


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus sacreBLEU and chrF, with their signatures (so numbers can be compared)."""
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_detail": str(b),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="translator checkpoint dir")
    parser.add_argument("--src", type=Path, required=True, help="source sentences, one per line")
    parser.add_argument("--ref", type=Path, required=True, help="reference translations")
    parser.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64, help="sources decoded together")
    parser.add_argument("--max-examples", type=int, default=None, help="score only the first N")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the scores")
    parser.add_argument("--hypotheses", type=Path, default=None, help="write translations here")


def run(args: argparse.Namespace) -> int:
    try:
        device = pick_device(args.device)
        model, config, tokenizer = load_translator(args.checkpoint, device)
        sources, references = read_parallel(args.src, args.ref, args.max_examples)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    if args.beam < 1:
        print(f"error: --beam must be >= 1, got {args.beam}")
        return 2
    start = time.monotonic()
    hypotheses = translate(
        model,
        tokenizer,
        sources,
        config["max_length"],
        args.beam,
        args.max_new_tokens,
        args.length_penalty,
        args.batch_size,
        device,
    )
    seconds = time.monotonic() - start
    result = {
        **score(hypotheses, references),
        "checkpoint": str(args.checkpoint),
        "arch": config["arch"],
        "src": str(args.src),
        "ref": str(args.ref),
        "sentences": len(sources),
        "beam": args.beam,
        "length_penalty": args.length_penalty,
        "max_new_tokens": args.max_new_tokens,
        "device": str(device),
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(sources) / seconds, 2) if seconds > 0 else None,
    }
    output = args.output or args.checkpoint / f"eval_{args.src.name}_beam{args.beam}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    if args.hypotheses:
        args.hypotheses.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    print(
        f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({len(sources)} sentences, "
        f"beam {args.beam}, {seconds:.1f}s)  -> {output}"
    )
    print(result["bleu_signature"])
    return 0
