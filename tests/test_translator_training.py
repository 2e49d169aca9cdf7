"""Training the translator end to end through the CLI on a handful of sentence pairs: both
architectures memorise them, the checkpoint round-trips, and `evaluate translator` scores it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from model_src.cli import main
from model_src.translator.checkpoint import load_translator
from model_src.translator.data import pad
from model_src.translator.decoding import beam_search, greedy_decode
from model_src.translator.tokenizer import EOS_ID, decode, encode

SRC = [
    "A man is riding a bike.",
    "Two dogs play in the snow.",
    "A woman reads a book.",
    "Children are playing football.",
    "A cat sleeps on the sofa.",
    "The girl is eating an apple.",
]
TGT = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau liest ein Buch.",
    "Kinder spielen Fußball.",
    "Eine Katze schläft auf dem Sofa.",
    "Das Mädchen isst einen Apfel.",
]
# Trains two tiny models for 300 steps each (about 15 s of CPU in all).
pytestmark = pytest.mark.slow

MODEL_ARGS = {
    "transformer": ["--d-model", "32", "--heads", "4", "--ffn", "64", "--layers", "2"],
    "gru-attention": ["--embed-dim", "32", "--hidden-size", "48", "--layers", "1"],
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models: one thread is faster than two fighting over shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    paths = {"src": root / "train.en.gz", "tgt": root / "train.de.gz"}
    for path, lines in ((paths["src"], SRC), (paths["tgt"], TGT)):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    paths["dev_src"], paths["dev_tgt"] = root / "dev.en", root / "dev.de"
    paths["dev_src"].write_text("\n".join(SRC) + "\n", encoding="utf-8")
    paths["dev_tgt"].write_text("\n".join(TGT) + "\n", encoding="utf-8")
    return paths


@pytest.fixture(scope="module", params=["transformer", "gru-attention"])
def trained(request, data, tmp_path_factory) -> tuple[str, Path]:
    """A tiny model of each architecture trained for 300 steps on the six pairs via the CLI."""
    arch = request.param
    out = tmp_path_factory.mktemp(arch) / "ckpt"
    argv = [
        "train", "translator", "--arch", arch,
        "--train-src", str(data["src"]), "--train-tgt", str(data["tgt"]),
        "--dev-src", str(data["dev_src"]), "--dev-tgt", str(data["dev_tgt"]),
        "--out", str(out), "--vocab-size", "200", *MODEL_ARGS[arch],
        "--dropout", "0", "--label-smoothing", "0", "--lr", "3e-3", "--warmup", "30",
        "--epochs", "300", "--eval-every", "100", "--log-every", "25", "--no-progress",
        "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    return arch, out


def test_training_writes_checkpoint_metrics_and_curve(trained) -> None:
    """`train translator` writes weights, config, tokenizer, JSON-lines metrics (train and dev
    records, dev BLEU among them) and a PNG curve."""
    arch, out = trained
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training_curve.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "nlpserve-translator" and config["arch"] == arch
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "dev"}
    assert all("bleu" in r for r in records if r["split"] == "dev")
    assert config["best"]["dev_bleu"] == max(r["bleu"] for r in records if r["split"] == "dev")


def test_tiny_model_memorises_its_training_pairs(trained) -> None:
    """After a few hundred steps on six pairs, greedy decoding reproduces every target."""
    _, out = trained
    model, config, tokenizer = load_translator(out)
    src = pad(encode(tokenizer, SRC, config["max_length"]))
    assert decode(tokenizer, greedy_decode(model, src, 40)) == TGT


def test_finished_hypotheses_stop_at_eos(trained) -> None:
    """Greedy and beam outputs end with exactly one <eos> and nothing after it, and each has the
    length of its target (subwords + <eos>) even though the batch decodes up to 40 tokens."""
    _, out = trained
    model, config, tokenizer = load_translator(out)
    src = pad(encode(tokenizer, SRC, config["max_length"]))
    expected = encode(tokenizer, TGT, config["max_length"])
    for hyps in (greedy_decode(model, src, 40), beam_search(model, src, 3, 40)):
        for hyp, target in zip(hyps, expected, strict=True):
            assert hyp.count(EOS_ID) == 1 and hyp[-1] == EOS_ID
            assert len(hyp) == len(target)


def test_trained_model_cached_beam_equals_uncached(trained) -> None:
    """On a trained model (hypotheses of different lengths finishing at different steps), the
    cached beam search gives exactly the tokens of the uncached one."""
    _, out = trained
    model, config, tokenizer = load_translator(out)
    src = pad(encode(tokenizer, SRC, config["max_length"]))
    assert beam_search(model, src, 4, 40, use_cache=True) == beam_search(
        model, src, 4, 40, use_cache=False
    )


def test_evaluate_cli_writes_bleu_json(trained, data, tmp_path: Path, capsys) -> None:
    """`evaluate translator` prints BLEU and chrF and writes them as JSON (100 when memorised)."""
    _, out = trained
    result_path = tmp_path / "scores.json"
    argv = [
        "evaluate", "translator", "--checkpoint", str(out), "--src", str(data["dev_src"]),
        "--ref", str(data["dev_tgt"]), "--beam", "2", "--output", str(result_path),
        "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(result_path.read_text())
    assert result["bleu"] == pytest.approx(100.0) and result["chrf"] == pytest.approx(100.0)
    assert result["beam"] == 2 and result["sentences"] == len(SRC)
    assert "BLEU 100.00" in capsys.readouterr().out


def test_evaluate_cli_rejects_a_missing_file(tmp_path: Path, capsys) -> None:
    """A missing checkpoint is a one-line error and exit code 2, not a traceback."""
    argv = [
        "evaluate", "translator", "--checkpoint", str(tmp_path / "nope"),
        "--src", str(tmp_path / "a"), "--ref", str(tmp_path / "b"),
    ]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().out.startswith("error:")


def test_init_continues_from_a_checkpoint(trained, data, tmp_path: Path) -> None:
    """`--init` starts from the checkpoint's weights and tokenizer (one near-zero-lr step keeps
    the memorised translations, where a fresh model scores ~0), and its architecture wins over a
    conflicting --arch."""
    arch, out = trained
    other = "gru-attention" if arch == "transformer" else "transformer"
    cont = tmp_path / "continued"
    argv = [
        "train", "translator", "--arch", other, "--init", str(out),
        "--train-src", str(data["src"]), "--train-tgt", str(data["tgt"]),
        "--dev-src", str(data["dev_src"]), "--dev-tgt", str(data["dev_tgt"]),
        "--out", str(cont), "--lr", "1e-9", "--warmup", "1", "--max-steps", "1",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((cont / "config.json").read_text())
    assert config["arch"] == arch
    assert config["init"]["checkpoint"] == str(out)
    assert config["best"]["dev_bleu"] == pytest.approx(100.0)
    assert (cont / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()


def test_init_rejects_a_directory_without_a_checkpoint(data, tmp_path: Path, capsys) -> None:
    argv = [
        "train", "translator", "--init", str(tmp_path),
        "--train-src", str(data["src"]), "--train-tgt", str(data["tgt"]),
        "--dev-src", str(data["dev_src"]), "--dev-tgt", str(data["dev_tgt"]),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(argv) == 2
    assert "--init" in capsys.readouterr().out
