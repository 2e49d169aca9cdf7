"""Small randomly initialised checkpoints in the project's checkpoint formats.

For tests and `python -m export bench --quick`: they exercise the whole export path in seconds.
The classifier uses the real MiniLM tokenizer.json (so texts tokenise as in production) with a
tiny encoder (hidden 32, 2 layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from export.samples import SENTENCE_LABELS, SENTENCES, SOURCE_SENTENCES
from model_src.bert.heads import SequenceClassifier
from model_src.bert.hf_checkpoint import default_checkpoint_dir, load_pretrained_bert
from model_src.bert.model import BertConfig, BertModel
from model_src.bert.tokenization import load_tokenizer, pad_encodings
from model_src.classifier.checkpoint import save_classifier
from model_src.classifier.tasks import task_of_checkpoint
from model_src.translator.checkpoint import save_translator
from model_src.translator.tokenizer import train_joint_bpe
from model_src.translator.transformer import Transformer
from model_src.translator.transformer_layers import TransformerConfig

TINY_BERT = {
    "hidden_size": 32,  # tiny but a multiple of the head count, like the real configs
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,  # the tokenizer may produce up to max_length tokens
}


def minilm_tokenizer_path() -> Path:
    return default_checkpoint_dir() / "tokenizer.json"


def tiny_classifier_checkpoint(
    out_dir: Path,
    task: str = "text-classification",
    labels: list[str] | None = None,
    seed: int = 0,
    max_length: int = 128,
    probe: bool = False,
    **bert_overrides: Any,
) -> Path:
    """A random SequenceClassifier checkpoint per the contract (config.json format v1).

    probe=True (text-classification only) fits the head on the bundled labelled sentences, so
    predictions are varied and confident rather than one label with a tiny margin everywhere.
    Pair it with a larger `initializer_range` (e.g. 0.5): at BERT's 0.02 a random tiny encoder
    gives nearly the same [CLS] vector for every input.
    """
    kind = task_of_checkpoint(task)
    labels = labels if labels is not None else list(kind.labels)
    torch.manual_seed(seed)
    config = BertConfig(**{**TINY_BERT, **bert_overrides})
    model = SequenceClassifier(BertModel(config), num_labels=len(labels))
    train_args: dict[str, Any] = {}
    if probe:
        train_args = {"linear_probe": _fit_linear_probe(model)}
    tokenizer = load_tokenizer(minilm_tokenizer_path())
    save_classifier(
        out_dir, model, tokenizer, kind.name, labels, max_length,
        init="random (export.tiny)", train_args=train_args, best={},
    )  # fmt: skip
    return out_dir


TINY_TRANSFORMER = {
    "d_model": 32,
    "n_heads": 2,
    "n_encoder_layers": 2,
    "n_decoder_layers": 2,
    "d_ff": 64,
    "max_positions": 128,  # room for a source of max_length and max_new_tokens targets
}


def tiny_translator_checkpoint(
    out_dir: Path, seed: int = 0, max_length: int = 64, **model_overrides: Any
) -> Path:
    """A random Transformer translator checkpoint with a BPE vocabulary trained on the samples."""
    tokenizer = train_joint_bpe(list(SOURCE_SENTENCES) * 2, vocab_size=300, min_frequency=1)
    torch.manual_seed(seed)
    # A vocab_size override larger than the tokenizer's is allowed (benchmarks at real size).
    config = TransformerConfig(
        **{"vocab_size": tokenizer.get_vocab_size(), **TINY_TRANSFORMER, **model_overrides}
    )
    model = Transformer(config).eval()
    save_translator(out_dir, model, "transformer", tokenizer, max_length)
    return out_dir


def minilm_probe_checkpoint(out_dir: Path, steps: int = 200, seed: int = 0) -> Path:
    """The real pretrained MiniLM-L6 encoder with a linear sentiment head fitted on the bundled
    labelled sentences (a linear probe: the encoder stays frozen, seconds on a CPU).

    Not a good sentiment model, but one with real encoder weights and confident, varied
    predictions, which is what int8/benchmark checks need from a model.
    """
    torch.manual_seed(seed)
    encoder: BertModel = load_pretrained_bert(default_checkpoint_dir())
    model = SequenceClassifier(encoder, num_labels=2).eval()
    fit = _fit_linear_probe(model, steps)
    tokenizer = load_tokenizer(minilm_tokenizer_path())
    save_classifier(
        out_dir, model, tokenizer, "classifier", ["negative", "positive"], 128,
        init=str(default_checkpoint_dir()), train_args={"linear_probe": fit}, best={},
    )  # fmt: skip
    return out_dir


def _fit_linear_probe(model: SequenceClassifier, steps: int = 200) -> dict[str, Any]:
    """Fit `model.classifier` by logistic regression on the frozen [CLS] vectors of the bundled
    labelled sentences (a few hundred Adam steps on 32 vectors: well under a second)."""
    tokenizer = load_tokenizer(minilm_tokenizer_path(), max_length=128)
    encodings = tokenizer.encode_batch(list(SENTENCES))
    batch = pad_encodings([e.ids for e in encodings], [e.type_ids for e in encodings])
    model.eval()
    with torch.no_grad():
        cls = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        cls = cls[:, 0]  # (N, H): the [CLS] vectors
    labels = torch.tensor(SENTENCE_LABELS)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model.classifier(cls), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model.classifier(cls).argmax(-1) == labels).float().mean()
    return {
        "data": "export.samples.SENTENCES",
        "steps": steps,
        "loss": float(loss.detach()),
        "accuracy": float(accuracy),
    }
