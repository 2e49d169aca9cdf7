"""WordPiece tokenization with the `tokenizers` library: load, encode, pad, train.

One `tokenizers.Tokenizer` travels with every model as tokenizer.json. An HF checkpoint that only
has vocab.txt gets the equivalent BERT pipeline built from it (BertNormalizer -> BertPreTokenizer
-> WordPiece -> [CLS] A [SEP] B [SEP] template), so both routes give identical ids.

The tokenizer truncates (longest-first for pairs) but never pads: collate pads each batch to its
own longest sequence with `pad_encodings`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in vocabularies we train


# --- Loading ------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path, max_length: int | None = None) -> Tokenizer:
    """A tokenizer from a directory (tokenizer.json preferred, else vocab.txt) or either file.

    max_length: truncate to this many tokens including [CLS]/[SEP], longest-first for pairs;
    None: no truncation. Padding is always off.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.txt").is_file():
            path = path / "vocab.txt"
        else:
            raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    if path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
    else:
        tokenizer = tokenizer_from_vocab(path)
    tokenizer.no_padding()  # HF tokenizer.json files may ship fixed padding (MiniLM: 128)
    set_max_length(tokenizer, max_length)
    return tokenizer


def set_max_length(tokenizer: Tokenizer, max_length: int | None) -> None:
    """Truncate to max_length tokens (longest-first for pairs), or not at all for None."""
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length, strategy="longest_first")


def _read_lowercase_setting(directory: Path) -> tuple[bool | None, bool | None, bool]:
    """(do_lower_case, strip_accents, tokenize_chinese_chars) from tokenizer_config.json or
    config.json next to the vocabulary; do_lower_case None when neither says."""
    for name in ("tokenizer_config.json", "config.json"):
        config_path = directory / name
        if config_path.is_file():
            values = json.loads(config_path.read_text())
            if "do_lower_case" in values:
                return (
                    bool(values["do_lower_case"]),
                    values.get("strip_accents"),
                    bool(values.get("tokenize_chinese_chars", True)),
                )
    return None, None, True


def _vocab_looks_cased(vocab: dict[str, int]) -> bool:
    # An uncased vocabulary has (almost) no upper-case letters outside [SPECIAL] tokens.
    words = [w for w in vocab if not (w.startswith("[") and w.endswith("]"))]
    upper = sum(any(c.isupper() for c in w) for w in words)
    return upper > 0.01 * max(len(words), 1)


def tokenizer_from_vocab(vocab_path: Path) -> Tokenizer:
    """The BERT WordPiece pipeline (as HF's BertTokenizerFast builds it) from a vocab.txt."""
    vocab = models.WordPiece.read_file(str(vocab_path))
    do_lower_case, strip_accents, chinese = _read_lowercase_setting(vocab_path.parent)
    if do_lower_case is None:
        do_lower_case = not _vocab_looks_cased(vocab)
        logger.info(
            "%s: no do_lower_case setting found; vocabulary looks %s",
            vocab_path,
            "uncased" if do_lower_case else "cased",
        )
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=chinese,
        strip_accents=strip_accents,  # None: strip accents exactly when lower-casing (HF's rule)
        lowercase=do_lower_case,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    _set_bert_template(tokenizer)
    return tokenizer


def _set_bert_template(tokenizer: Tokenizer) -> None:
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    if cls_id is None or sep_id is None:
        raise ValueError("a BERT vocabulary needs [CLS] and [SEP] tokens")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


def special_token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a special token, with a clear error when the vocabulary lacks it."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer's vocabulary has no {token} token")
    return token_id


def tokenizer_lowercases(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's normalizer lower-cases (for tokenizer_config.json)."""
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    stack = [normalizer]
    while stack:
        node = stack.pop()
        if node.get("type") == "Lowercase" or (
            node.get("type") == "BertNormalizer" and node.get("lowercase")
        ):
            return True
        stack.extend(node.get("normalizers", []))
    return False


def write_vocab_txt(tokenizer: Tokenizer, path: Path) -> bool:
    """vocab.txt (one token per line, line number = id) for WordPiece tokenizers.

    Returns False (and writes nothing) for other model types, which have no vocab.txt form.
    """
    if json.loads(tokenizer.to_str())["model"]["type"] != "WordPiece":
        logger.info("not writing %s: only WordPiece tokenizers have a vocab.txt form", path)
        return False
    by_id = {i: token for token, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError("the tokenizer's ids are not contiguous; cannot write vocab.txt")
    path.write_text("".join(by_id[i] + "\n" for i in range(len(by_id))), encoding="utf-8")
    return True


def save_tokenizer_files(tokenizer: Tokenizer, out_dir: Path, model_max_length: int = 512) -> None:
    """tokenizer.json (no padding/truncation baked in), vocab.txt and tokenizer_config.json."""
    # The saved file carries no padding/truncation: collate pads and callers pick max_length.
    # A copy, so the caller's tokenizer keeps its settings.
    clean = Tokenizer.from_str(tokenizer.to_str())
    clean.no_padding()
    clean.no_truncation()
    clean.save(str(out_dir / "tokenizer.json"))
    write_vocab_txt(clean, out_dir / "vocab.txt")
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": tokenizer_lowercases(clean),
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": model_max_length,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


# --- Encoding and padding -----------------------------------------------------------------------


@dataclass
class Encodings:
    """Unpadded token ids of a batch: one list per example."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    attention_mask: list[list[int]] = field(default_factory=list)

    def padded(self, pad_id: int = 0) -> dict[str, torch.Tensor]:
        return pad_encodings(self.input_ids, self.token_type_ids, pad_id)


def encode_batch(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    max_length: int | None = None,
) -> Encodings:
    """Encode texts (or text pairs: [CLS] a [SEP] b [SEP], segment ids 0/1), truncating to
    max_length longest-first when given (else the tokenizer's own truncation setting)."""
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
    inputs: list = list(texts) if text_pairs is None else list(zip(texts, text_pairs, strict=True))
    previous = tokenizer.truncation
    if max_length is not None:
        set_max_length(tokenizer, max_length)
    try:
        encodings = tokenizer.encode_batch(inputs)
    finally:
        if max_length is not None:  # leave the caller's tokenizer as it was
            if previous is None:
                tokenizer.no_truncation()
            else:
                tokenizer.enable_truncation(**previous)
    return Encodings(
        input_ids=[e.ids for e in encodings],
        token_type_ids=[e.type_ids for e in encodings],
        attention_mask=[e.attention_mask for e in encodings],
    )


def pad_encodings(
    input_ids: Sequence[Sequence[int]],
    token_type_ids: Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest sequence -> int64 tensors (B, T):
    input_ids, attention_mask (1 token / 0 padding), token_type_ids (0 on padding)."""
    if not input_ids:
        raise ValueError("cannot pad an empty batch")
    B, T = len(input_ids), max(len(ids) for ids in input_ids)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    types = torch.zeros((B, T), dtype=torch.long)
    for i, row in enumerate(input_ids):
        n = len(row)
        ids[i, :n] = torch.tensor(row, dtype=torch.long)
        mask[i, :n] = 1
        if token_type_ids is not None:
            types[i, :n] = torch.tensor(token_type_ids[i], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# --- Training a vocabulary ----------------------------------------------------------------------


def train_wordpiece(
    corpus_files: Sequence[str | Path],
    vocab_size: int,
    lowercase: bool = True,
    out_dir: str | Path | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a BERT-style WordPiece vocabulary on raw text files (one or more sentences a line).

    Special tokens get ids 0..4: [PAD] [UNK] [CLS] [SEP] [MASK]. With out_dir, writes
    tokenizer.json, vocab.txt and tokenizer_config.json there.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train([str(f) for f in corpus_files], trainer)
    _set_bert_template(tokenizer)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tokenizer_files(tokenizer, out_dir)
    return tokenizer


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m model_src tokenizer train` options."""
    parser.add_argument(
        "--corpus", type=Path, nargs="+", required=True, help="raw text file(s), UTF-8"
    )
    parser.add_argument("--vocab-size", type=int, default=8000, help="target vocabulary size")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--cased", action="store_true", help="keep case and accents (default: lower-case)"
    )
    parser.add_argument(
        "--min-frequency", type=int, default=2, help="minimum pair frequency for a merge"
    )


def run_train(args: argparse.Namespace) -> int:
    """Train a WordPiece vocabulary; returns the exit code."""
    missing = [str(p) for p in args.corpus if not Path(p).is_file()]
    if missing:
        print(f"error: corpus file not found: {', '.join(missing)}")
        return 2
    if args.vocab_size <= len(SPECIAL_TOKENS):
        print(f"error: --vocab-size must be larger than {len(SPECIAL_TOKENS)}")
        return 2
    tokenizer = train_wordpiece(
        args.corpus, args.vocab_size, not args.cased, args.out, args.min_frequency
    )
    print(f"wrote {args.out}/tokenizer.json and vocab.txt ({tokenizer.get_vocab_size()} tokens)")
    return 0
