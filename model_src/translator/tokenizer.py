"""The translator's subword vocabulary: one joint BPE model for English and German.

Choices, and why:

- **BPE rather than Unigram.** Both reach the same BLEU on corpora of this size; BPE's merges are
  deterministic (one segmentation per word, no sampling), trains in a second on Multi30k, and is
  what the Transformer paper and most Multi30k baselines used, so results compare directly.
- **One joint vocabulary rather than two.** English and German share most of their alphabet,
  every name, number and punctuation mark, and many cognates ("Mann"/"man", "Ball"/"ball"); a joint
  vocabulary lets copyable tokens map to the same id on both sides, lets the model tie its source
  embedding, target embedding and output projection (three-way tying, Press & Wolf 2017) which
  matters with only 29k training pairs, and gives one `tokenizer.json` for export and serving.
- **Metaspace + punctuation split, cased, NFC.** Words carry a leading "▁" so decoding restores
  spaces exactly (the text round-trips); punctuation at a word's edge is split off so "bushes."
  and "bushes" share a token, while a mark inside a word ("T-Shirt", "Mann's") stays in it, so
  the word ends once; case is kept because sacreBLEU scores cased, detokenized text.
- **Word ends marked too** (`WORD_END`, the BPE end-of-word suffix of the original subword-nmt).
  A word's last subword says so, so a stream can send a word the step its last subword is
  decoded; with start marks alone a word is known whole only when the next word's first subword
  arrives, one decoder step later (service/streaming.py). On Multi30k's validation German: 15.78
  subwords per sentence against 15.31 unmarked, 988 of 1,014 first subwords end their word, every
  text still round-trips.

Special tokens have fixed ids (`PAD_ID`..`UNK_ID` below). The saved post-processor appends
`<eos>` to every encoded text, so `tokenizer.encode(text).ids` is exactly a model's source input
(and the target output); the decoder's first input is `<sos>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.trainers import BpeTrainer

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, SOS, EOS, UNK)  # trained first, so their ids are 0..3 in this order
PAD_ID, SOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"
WORD_END = "</w>"  # the suffix of a subword that ends its word (pre-token); decoding drops it


# A punctuation mark (Unicode's, and the ASCII symbols tokenizers' Punctuation splits off too)
# is a word of its own unless it stands between two letters or digits: "bushes." -> "▁bushes",
# "." but "T-Shirt", "Mann's" and "3.5" stay whole, so the word-end mark comes after "Shirt",
# not after "T" (a stream would otherwise send "T", "-", "Shirt" as three pieces).
_PUNCTUATION = r"[\p{P}$+<=>^`|~]"
_LETTER_OR_DIGIT = r"[\p{L}\p{N}]"
_PUNCTUATION_AT_WORD_EDGE = Regex(
    rf"(?<!{_LETTER_OR_DIGIT}){_PUNCTUATION}|{_PUNCTUATION}(?!{_LETTER_OR_DIGIT})"
)


def _metaspace_parts() -> tuple[pre_tokenizers.PreTokenizer, decoders.Decoder]:
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Split(_PUNCTUATION_AT_WORD_EDGE, behavior="isolated"),
        ]
    )
    dec = decoders.Sequence(
        [
            decoders.Replace(WORD_END, ""),
            decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    return pre, dec


def train_joint_bpe(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2
) -> Tokenizer:
    """Train one BPE vocabulary on source and target texts together (pass both sides' lines).

    The same texts give the same tokenizer on every run. tokenizers' trainer (0.23) numbers the
    word-final characters it makes for an end-of-word suffix ("e</w>", ...) in hash-map order
    and breaks ties between pairs of equal count by those numbers, so two trainings gave
    different ids and, for tied pairs, a different merge order (2 pairs swapped in 3 runs on
    Multi30k): every rebuilt translator a slightly different model. Handing it those characters
    first, sorted, as special tokens fixes their ids; the vocabulary is then rebuilt from the
    trained model's vocabulary and merges with the four real special tokens only.
    """
    texts = list(texts)
    normalizer = normalizers.NFC()
    pre, dec = _metaspace_parts()
    word_final = sorted(
        {
            word[-1] + WORD_END
            for text in texts
            for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))
            if word
        }
    )
    trained = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=WORD_END))
    trained.normalizer, trained.pre_tokenizer = normalizer, pre
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *word_final],
        end_of_word_suffix=WORD_END,
        show_progress=False,
    )
    trained.train_from_iterator(texts, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    tokenizer = Tokenizer(
        models.BPE(
            vocab=model["vocab"],
            merges=[tuple(pair) for pair in model["merges"]],
            unk_token=UNK,
            end_of_word_suffix=WORD_END,
        )
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer, tokenizer.decoder = pre, dec
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, EOS_ID)]
    )
    check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer) -> None:
    """Fail loudly if a tokenizer's special ids differ from the ones the models are built with."""
    for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, SOS_ID, EOS_ID, UNK_ID), strict=True):
        got = tokenizer.token_to_id(token)
        if got != expected:
            raise ValueError(f"tokenizer has {token} at id {got}, expected {expected}")


def special_token_ids() -> dict[str, int]:
    """The special tokens and their ids, as stored in checkpoint configs."""
    return {PAD: PAD_ID, SOS: SOS_ID, EOS: EOS_ID, UNK: UNK_ID}


def load_tokenizer(path: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    check_special_tokens(tokenizer)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Subword ids of each text followed by `<eos>`, cut to at most max_length ids (the `<eos>`
    is kept when cutting, so a truncated source still tells the encoder where it ends)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one token and <eos>), got {max_length}")
    out = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids = enc.ids
        if len(ids) > max_length:
            ids = [*ids[: max_length - 1], EOS_ID]
        out.append(ids)
    return out


def decode(tokenizer: Tokenizer, sequences: Sequence[Sequence[int]]) -> list[str]:
    """Texts of generated id sequences; special tokens (and anything after `<eos>`) dropped."""
    cut = []
    for ids in sequences:
        ids = list(ids)
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        cut.append(ids)
    return tokenizer.decode_batch(cut, skip_special_tokens=True)
