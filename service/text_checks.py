"""Client text the tokenizers cannot take, found before it reaches them (a 422, not a 500)."""

from __future__ import annotations


def unencodable(text: str) -> str | None:
    """Why `text` cannot be tokenized, or None. JSON may escape lone UTF-16 surrogates
    ("\\ud800") that decode to a Python str no UTF-8 encoder, the tokenizer's included, accepts."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate {text[e.start]!a} at character {e.start}: not valid Unicode"
    return None
