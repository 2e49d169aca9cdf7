"""Tokenization with the model's own tokenizer.json (`tokenizers`, batch encoding).

Padding is switched off (the engine pads each run to its longest sequence) and truncation is set
to the model's max_length, counting special tokens; each `Encoded` says whether it was cut, so
the response can report it (or the request be refused when truncation is disabled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    type_ids: list[int]  # segment ids: 0 for the first text, 1 for the second of a pair
    truncated: bool

    @property
    def tokens(self) -> int:
        return len(self.ids)


class TextEncoder:
    def __init__(self, tokenizer_json: str, max_length: int) -> None:
        tokenizer = Tokenizer.from_str(tokenizer_json)
        padding = tokenizer.padding  # the file may carry a pad id (and fixed-length padding)
        self.pad_id: int = padding["pad_id"] if padding else _pad_id(tokenizer)
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.max_length = max_length
        self._tokenizer = tokenizer
        self.word_end_ids = _word_end_ids(tokenizer)

    # One text goes through the single-item calls: the batch calls release the GIL, and on a
    # busy server the calling thread then waits for it behind other threads' Python (up to the
    # 5 ms switch interval; 20 us of work) - the event loop for every request's tokenization, a
    # decode lane for every finished sequence, a stream for every token. Same ids and text.
    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        if len(texts) == 1:
            return [_encoded(self._tokenizer.encode(texts[0]))]
        return [_encoded(e) for e in self._tokenizer.encode_batch(list(texts))]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        if len(pairs) == 1:
            return [_encoded(self._tokenizer.encode(*pairs[0]))]
        return [_encoded(e) for e in self._tokenizer.encode_batch(list(pairs))]

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        if len(sequences) == 1:
            return [self._tokenizer.decode(list(sequences[0]), skip_special_tokens=True)]
        return self._tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=True)


def _encoded(encoding: object) -> Encoded:
    return Encoded(
        ids=encoding.ids,  # type: ignore[attr-defined]
        type_ids=encoding.type_ids,  # type: ignore[attr-defined]
        truncated=bool(encoding.overflowing),  # type: ignore[attr-defined]
    )


def _word_end_ids(tokenizer: Tokenizer) -> frozenset[int] | None:
    """The ids of the subwords that end a word, when the vocabulary marks them (a BPE model with
    an `end_of_word_suffix`, as the translator's since model_src.translator.tokenizer.WORD_END);
    None when it does not (a word is then known whole only when the next one starts)."""
    suffix = getattr(tokenizer.model, "end_of_word_suffix", None)  # BPE models only
    if not suffix:
        return None
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return frozenset(i for token, i in vocab.items() if token.endswith(suffix))


def _pad_id(tokenizer: Tokenizer) -> int:
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
