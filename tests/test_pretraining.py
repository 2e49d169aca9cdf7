"""MLM masking statistics, NSP pair building, and a short pretraining run whose checkpoint is a
valid --init (for our loader and for transformers)."""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers is only the reference here; never the hub

import pytest
import torch

from model_src.bert.heads import IGNORE_INDEX
from model_src.bert.hf_checkpoint import load_pretrained_bert
from model_src.bert.tokenization import load_tokenizer, train_wordpiece
from model_src.common.resume import load_resume_state
from model_src.pretrain.data import (
    IS_NEXT,
    NOT_NEXT,
    PretrainingCollator,
    build_nsp_pairs,
    mask_tokens,
    read_documents,
)
from model_src.pretrain.train import PretrainConfig, add_arguments, build_model, run

CLS_ID, SEP_ID, PAD_ID, MASK_ID, VOCAB = 101, 102, 0, 103, 30522  # the MiniLM vocabulary's ids


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    # Tiny models are dominated by intra-op threading overhead on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bert_like_batch(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words [SEP] words [SEP] [PAD]... rows of random lengths; returns ids, special mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (rows, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n // 2], ids[i, n - 1] = CLS_ID, SEP_ID, SEP_ID
        ids[i, n:] = PAD_ID
    special = torch.isin(ids, torch.tensor([CLS_ID, SEP_ID, PAD_ID, MASK_ID]))
    return ids, special


def test_masking_rates_match_bert() -> None:
    """Over ~200k tokens: 15% +- 1 point of the eligible tokens are selected; of those 80/10/10
    (+- 2 points) become [MASK] / a random token / stay; special tokens and padding never are;
    labels carry the original id exactly at selected positions."""
    ids, special = bert_like_batch(rows=1400, length=200, seed=0)
    inputs, labels = mask_tokens(ids, special, MASK_ID, VOCAB, torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    assert not selected[special].any()
    assert torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    eligible = int((~special).sum())
    assert eligible > 200_000
    assert abs(int(selected.sum()) / eligible - 0.15) < 0.01
    n = int(selected.sum())
    masked = (inputs == MASK_ID) & selected
    unchanged = (inputs == ids) & selected
    randomised = selected & ~masked & ~unchanged
    assert abs(int(masked.sum()) / n - 0.80) < 0.02
    assert abs(int(randomised.sum()) / n - 0.10) < 0.02
    assert abs(int(unchanged.sum()) / n - 0.10) < 0.02
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else is touched


def test_masking_is_reproducible_from_the_generator() -> None:
    """The same generator seed gives the same masks; another seed gives others."""
    ids, special = bert_like_batch(rows=8, length=64, seed=3)
    a = mask_tokens(ids, special, MASK_ID, VOCAB, torch.Generator().manual_seed(5))
    b = mask_tokens(ids, special, MASK_ID, VOCAB, torch.Generator().manual_seed(5))
    c = mask_tokens(ids, special, MASK_ID, VOCAB, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_read_documents_splits_on_blank_lines(tmp_path: Path) -> None:
    """Lines are sentences; one or more blank (or whitespace-only) lines end a document."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\nA one.\n  A two.  \n\n \n\nB one.\nB two.\nB three.\n\n")
    assert read_documents(path) == [["A one.", "A two."], ["B one.", "B two.", "B three."]]


def test_nsp_pairs_are_balanced_and_correct() -> None:
    """50% +- 3 points of the pairs are NOT_NEXT; IS_NEXT pairs are true successors and
    NOT_NEXT seconds come from another document."""
    documents = [[f"d{d} s{i}" for i in range(10)] for d in range(300)]
    pairs = build_nsp_pairs(documents, random.Random(0))
    assert len(pairs) == 300 * 9
    share = sum(p.label == NOT_NEXT for p in pairs) / len(pairs)
    assert abs(share - 0.5) < 0.03
    for p in pairs:
        doc_a, i = p.first.split()
        doc_b, j = p.second.split()
        if p.label == IS_NEXT:
            assert doc_a == doc_b and int(j[1:]) == int(i[1:]) + 1
        else:
            assert doc_a != doc_b


TOPICS = {
    "cat": ["cat", "kitten", "whiskers", "purr", "mouse", "milk"],
    "dog": ["dog", "puppy", "bark", "bone", "leash", "walk"],
    "bird": ["bird", "nest", "wing", "song", "feather", "sky"],
    "fish": ["fish", "water", "fin", "pond", "swim", "bubble"],
    "car": ["car", "engine", "wheel", "road", "driver", "fuel"],
}
TEMPLATES = [
    "the {a} saw the {b} near the {c} .",
    "a {a} likes the {b} and the {c} .",
    "every {a} has a {b} .",
    "my {a} found a {b} by the {c} today .",
    "why does the {a} need a {b} ?",
]


def write_corpus(path: Path, documents: int, seed: int = 0) -> None:
    """Topic documents of templated sentences: learnable words, co-occurrence and coherence."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        words = TOPICS[rng.choice(list(TOPICS))]
        sentences = [
            rng.choice(TEMPLATES).format(
                a=rng.choice(words), b=rng.choice(words), c=rng.choice(words)
            )
            for _ in range(rng.randint(4, 8))
        ]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n")


def pretrain_args(**overrides: object) -> argparse.Namespace:
    """Parse `pretrain` options: a tiny from-scratch model, plus overrides (steps=300 ->
    --steps 300)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options: dict[str, object] = dict(
        max_length=32, batch_size=32, hidden_size=32, num_layers=2, num_heads=4,
        intermediate_size=64, lr=3e-3, device="cpu", log_every=25, eval_every=100,
    )  # fmt: skip
    options.update(overrides)
    argv = [x for k, v in options.items() for x in ("--" + k.replace("_", "-"), str(v))]
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT pretrained from scratch for 300 steps on a small corpus (CLI entry point)."""
    root = tmp_path_factory.mktemp("pretrain")
    write_corpus(root / "corpus.txt", documents=200)
    train_wordpiece([root / "corpus.txt"], vocab_size=200, out_dir=root / "tok")
    args = pretrain_args(
        corpus=root / "corpus.txt", out=root / "out", tokenizer=root / "tok", steps=300
    )
    assert run(args) == 0
    return root


def records(out: Path, split: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_pretraining_lowers_the_loss(pretrained: Path) -> None:
    """300 steps on a small corpus cut the summed MLM+NSP loss clearly, on train and dev, and
    write the metrics, the curve and an HF-layout checkpoint."""
    out = pretrained / "out"
    train, dev = records(out, "train"), records(out, "dev")
    assert train[-1]["step"] == 300
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    assert dev[-1]["loss"] < dev[0]["loss"] - 0.3
    assert dev[-1]["mlm_accuracy"] > 0.3
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (out / name).is_file()
    assert (out / "training_curve.png").stat().st_size > 0


def test_checkpoint_is_a_valid_init(pretrained: Path) -> None:
    """The output loads with load_pretrained_bert + load_tokenizer (what fine-tuning's --init
    does), and transformers.BertForPreTraining reads it to the same MLM and NSP logits."""
    import transformers

    out = pretrained / "out"
    encoder = load_pretrained_bert(out)
    tokenizer = load_tokenizer(out, max_length=32)
    enc = tokenizer.encode("the cat saw the [MASK] .", "a kitten likes milk .")
    ids = torch.tensor([enc.ids])
    types = torch.tensor([enc.type_ids])
    assert encoder(ids, token_type_ids=types).shape == (1, len(enc.ids), 32)

    ours = build_model(PretrainConfig(corpus=Path(), out=Path(), init=str(out)), tokenizer).eval()
    reference = transformers.BertForPreTraining.from_pretrained(
        str(out), local_files_only=True
    ).eval()
    with torch.no_grad():
        got = ours(ids, token_type_ids=types)
        want = reference(input_ids=ids, token_type_ids=types)
    assert (got.mlm_logits - want.prediction_logits).abs().max().item() < 1e-4
    assert (got.nsp_logits - want.seq_relationship_logits).abs().max().item() < 1e-5
    card = (out / "README.md").read_text()  # the model card, with the Hub's metadata header
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")


def test_continued_pretraining_resumes_the_heads(pretrained: Path) -> None:
    """`pretrain --init <our checkpoint>` starts from the trained MLM/NSP heads: its first loss is
    near the end of the first run, far below a fresh head's."""
    out = pretrained / "out"
    args = pretrain_args(
        corpus=str(pretrained / "corpus.txt"),
        out=str(pretrained / "again"),
        init=str(out),
        steps=4,
        log_every=1,
        lr=1e-6,
    )
    assert run(args) == 0
    first_run, resumed = records(out, "train"), records(pretrained / "again", "train")
    assert resumed[0]["loss"] < first_run[0]["loss"] - 1.0


def test_single_document_corpus_is_a_clear_error(
    pretrained: Path, capsys: pytest.CaptureFixture
) -> None:
    """A corpus without blank-line document breaks cannot give NSP negatives: exit code 2 and a
    one-line message, no traceback."""
    corpus = pretrained / "one_doc.txt"
    corpus.write_text("one sentence.\nanother sentence.\n")
    args = pretrain_args(
        corpus=corpus, out=pretrained / "bad", tokenizer=pretrained / "tok", steps=2
    )
    assert run(args) == 2
    assert "NSP needs at least two" in capsys.readouterr().out


def test_collator_masks_only_real_tokens(pretrained: Path) -> None:
    """A collated batch never selects [CLS]/[SEP]/[PAD] and keeps the pair's segment ids."""
    tokenizer = load_tokenizer(pretrained / "tok")
    documents = read_documents(pretrained / "corpus.txt")
    pairs = build_nsp_pairs(documents, random.Random(1))[:64]
    collate = PretrainingCollator(tokenizer, 32, torch.Generator().manual_seed(0), 0.5)
    batch = collate(pairs)
    specials = torch.tensor([tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")])
    selected = batch["mlm_labels"] != IGNORE_INDEX
    assert selected.any()
    assert not torch.isin(batch["mlm_labels"][selected], specials).any()
    assert not selected[batch["attention_mask"] == 0].any()
    assert batch["nsp_labels"].tolist() == [p.label for p in pairs]
    assert batch["token_type_ids"][:, 0].eq(0).all() and batch["token_type_ids"].eq(1).any()


def test_resumed_pretraining_ends_with_the_uninterrupted_weights(
    pretrained: Path, tmp_path: Path
) -> None:
    """Stopped at step 4 of 10 and resumed: the same weights as 10 steps in one go (the masking
    generator and the NSP data position are part of the resume state)."""
    common = dict(corpus=pretrained / "corpus.txt", tokenizer=pretrained / "tok", steps=10)
    assert run(pretrain_args(out=tmp_path / "whole", **common)) == 0
    assert run(pretrain_args(out=tmp_path / "part", max_steps=4, **common)) == 0
    resumed = pretrain_args(out=tmp_path / "part", **common)
    resumed.resume = True
    assert run(resumed) == 0
    whole = load_resume_state(tmp_path / "whole")
    part = load_resume_state(tmp_path / "part")
    assert whole is not None and part is not None and part.position.step == 10
    for name, tensor in whole.model.items():
        assert torch.equal(tensor, part.model[name]), name
    assert torch.equal(whole.generators["masks"], part.generators["masks"])
