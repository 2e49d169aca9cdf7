"""Hugging Face checkpoints in and out.

In: a BertForSequenceClassification built and saved by `transformers` (random weights) exports,
serves through /v1 and V2 on a real uvicorn, and answers with transformers' probabilities.
Out: a checkpoint nlpserve fine-tunes loads in transformers with the same logits.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

TEXTS = ["a wonderful, moving film", "dull and far too long", "it is a film.", "ok"]
PAIRS = [
    ("A man plays a guitar.", "A person makes music."),
    ("Two dogs run on the beach.", "The animals are asleep."),
    ("A child reads.", "Someone is reading a book in a quiet library today."),
]
SENTIMENT_LABELS = ["negative", "positive"]
NLI_LABELS = ["entailment", "neutral", "contradiction"]


def save_hf_classifier(out: Path, labels: list[str], seed: int, vocab_only: bool = False) -> Path:
    """A tiny random BertForSequenceClassification with the MiniLM tokenizer, as transformers
    writes it (save_pretrained); `vocab_only` keeps vocab.txt and drops tokenizer.json."""
    from model_src.bert.hf_checkpoint import default_checkpoint_dir

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, initializer_range=0.2,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).eval().save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(default_checkpoint_dir()).save_pretrained(out)
    if vocab_only:  # an older layout: the vocabulary alone
        (out / "tokenizer.json").unlink()
        shutil.copyfile(default_checkpoint_dir() / "vocab.txt", out / "vocab.txt")
    return out


def transformers_probabilities(directory: Path, texts: list[Any]) -> np.ndarray:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    if isinstance(texts[0], tuple):
        encoded = tokenizer(
            [p for p, _ in texts], [h for _, h in texts], padding=True, return_tensors="pt"
        )
    else:
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(model(**encoded).logits, -1).numpy()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "sentiment": save_hf_classifier(root / "sentiment", SENTIMENT_LABELS, seed=1),
        "nli": save_hf_classifier(root / "nli", NLI_LABELS, seed=2, vocab_only=True),
    }


@pytest.fixture(scope="module")
def hf_repository(hf_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.__main__ import main

    repository = tmp_path_factory.mktemp("hf-repository")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter
        for kind, name in (("classifier", "sentiment"), ("nli", "nli")):
            argv = [kind, "--checkpoint", str(hf_dirs[name]), "--repository", str(repository)]
            assert main([*argv, "--threads", "1"]) == 0
    return repository


def test_export_reads_labels_length_and_checks_against_transformers(hf_repository: Path) -> None:
    config = json.loads((hf_repository / "nli" / "config.json").read_text())
    assert config["labels"] == NLI_LABELS and config["task"] == "text-pair-classification"
    assert config["max_length"] == 256  # max_position_embeddings; MiniLM's tokenizer allows 512
    manifest = json.loads((hf_repository / "sentiment" / "1" / "manifest.json").read_text())
    assert manifest["parity"]["pytorch_vs_transformers"]["max_abs_diff"] <= 1e-4
    card = (hf_repository / "sentiment" / "1" / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
    assert "README.md" in manifest["files"]


def test_served_probabilities_equal_transformers(
    hf_repository: Path, hf_dirs: dict[str, Path], launch_server: Callable[..., Any]
) -> None:
    server = launch_server(hf_repository)
    expected = transformers_probabilities(hf_dirs["sentiment"], TEXTS)
    r = httpx.post(server.url + "/v1/classify", json={"texts": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    served = np.array(
        [[res["scores"][label] for label in SENTIMENT_LABELS] for res in r.json()["results"]]
    )
    assert np.abs(served - expected).max() <= 1e-4
    assert [res["label"] for res in r.json()["results"]] == [
        SENTIMENT_LABELS[i] for i in expected.argmax(-1)
    ]

    expected = transformers_probabilities(hf_dirs["nli"], PAIRS)
    request = {
        "inputs": [
            {"name": "premise", "shape": [3], "datatype": "BYTES", "data": [p for p, _ in PAIRS]},
            {
                "name": "hypothesis",
                "shape": [3],
                "datatype": "BYTES",
                "data": [h for _, h in PAIRS],
            },
        ]
    }
    r = httpx.post(server.url + "/v2/models/nli/infer", json=request, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    probs = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert np.abs(probs - expected).max() <= 1e-4
    pairs = [{"premise": p, "hypothesis": h} for p, h in PAIRS]
    r = httpx.post(server.url + "/v1/nli", json={"pairs": pairs}, timeout=30)
    served = np.array(
        [[res["scores"][label] for label in NLI_LABELS] for res in r.json()["results"]]
    )
    assert np.abs(served - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"architectures": ["RobertaForSequenceClassification"], "model_type": "roberta"},
         ["RobertaForSequenceClassification", "nlpserve loads BertForSequenceClassification"]),
        ({"architectures": ["BertForSequenceClassification"], "model_type": "bert",
          "problem_type": "multi_label_classification"}, ["multi-label"]),
    ],
)  # fmt: skip
def test_other_architectures_are_refused_by_name(
    config: dict[str, Any], named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.__main__ import main

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert (
        main(["classifier", "--checkpoint", str(tmp_path), "--repository", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert all(words in err for words in named), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("task", ["classifier", "nli"])
def test_finetuned_checkpoint_loads_in_transformers_with_the_same_logits(
    task: str, tmp_path: Path
) -> None:
    from model_src.bert.heads import SequenceClassifier
    from model_src.bert.hf_checkpoint import default_checkpoint_dir
    from model_src.bert.model import BertConfig, BertModel
    from model_src.bert.tokenization import load_tokenizer
    from model_src.classifier.checkpoint import load_classifier, save_classifier

    labels = SENTIMENT_LABELS if task == "classifier" else NLI_LABELS
    torch.manual_seed(3)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, initializer_range=0.5,
    )  # fmt: skip
    model = SequenceClassifier(BertModel(config), len(labels)).eval()
    tokenizer = load_tokenizer(default_checkpoint_dir())
    save_classifier(tmp_path, model, tokenizer, task, labels, 64, best={"dev_accuracy": 0.5})

    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf_model).__name__ == "BertForSequenceClassification"
    assert list(hf_model.config.id2label.values()) == labels
    texts: list[Any] = TEXTS if task == "classifier" else PAIRS
    ours = tokenizer.encode_batch(texts)
    if task == "classifier":
        encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")
    else:
        encoded = hf_tokenizer(
            [p for p, _ in PAIRS], [h for _, h in PAIRS], padding=True, return_tensors="pt"
        )
    for row, encoding in zip(encoded["input_ids"], ours, strict=True):
        assert row[: len(encoding.ids)].tolist() == encoding.ids  # the same tokens
    with torch.inference_mode():
        expected = model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
        got = hf_model(**encoded).logits
    assert (got - expected.logits).abs().max().item() <= 1e-5

    reloaded, _, _ = load_classifier(tmp_path)  # and nlpserve reads its own file back exactly
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "value: 0.5" in card and "## Limits" in card

    from export.classifier import export_classifier  # and it exports as nlpserve's own format

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter
        version = export_classifier(tmp_path, tmp_path / "repository", kind=task, threads=1)
    manifest = json.loads((version / "manifest.json").read_text())
    assert "pytorch_vs_transformers" not in manifest["parity"]  # read natively, not as HF
    assert manifest["parity"]["fp32_vs_pytorch"]["max_abs_diff"] <= 1e-4


def test_format_1_checkpoints_with_our_own_weight_names_still_load(tmp_path: Path) -> None:
    """Checkpoints written before the HF layout (runs/, make models) keep loading."""
    from dataclasses import asdict

    from model_src.bert.heads import SequenceClassifier
    from model_src.bert.hf_checkpoint import default_checkpoint_dir
    from model_src.bert.model import BertConfig, BertModel
    from model_src.classifier.checkpoint import load_classifier
    from model_src.common.checkpoint import save_checkpoint

    torch.manual_seed(5)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    model = SequenceClassifier(BertModel(config), 2)
    old = {"format": "nlpserve-classifier", "format_version": 1, "task": "text-classification",
           "labels": SENTIMENT_LABELS, "max_length": 32, "encoder": asdict(config)}  # fmt: skip
    tokenizer = default_checkpoint_dir() / "tokenizer.json"
    save_checkpoint(tmp_path, model, old, {"tokenizer.json": tokenizer})
    loaded, _, _ = load_classifier(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
