"""Release bundles: `python -m export release` packs a repository, `unpack` verifies and unpacks
it, and the unpacked directory serves as it is; damaged or hostile archives are refused.

One module-scoped bundle is built from the shared tiny repository, with a sentiment version 2
exported with dev data so that the card and release.json carry measured dev scores.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from export.__main__ import main as export_main
from service import bundle
from tests.conftest import ServerProcess

DEV_ROWS = [("1", "a wonderful, moving film"), ("0", "dull and far too long"), ("1", "a gem")]


@pytest.fixture(scope="module")
def release_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny repository plus sentiment version 2, exported with a labelled dev file."""
    from export.classifier import export_classifier
    from export.tiny import tiny_classifier_checkpoint

    root = tmp_path_factory.mktemp("release")
    repository = root / "repository"
    shutil.copytree(model_repository, repository)
    dev = root / "dev.tsv"
    dev.write_text("label\tsentence\n" + "".join(f"{y}\t{x}\n" for y, x in DEV_ROWS))
    export_classifier(
        tiny_classifier_checkpoint(root / "ckpt"), repository, version=2, dev=dev, threads=1
    )
    return repository


@pytest.fixture(scope="module")
def archive(release_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("archive") / "nlpserve-models.tar.gz"
    assert export_main(["release", "--repository", str(release_repository), "--out", str(out)]) == 0
    return out


def read_release(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("nlpserve-models/release.json")
        assert member is not None
        return dict(json.load(member))


def rewrite(archive: Path, out: Path, change: Callable[[tarfile.TarInfo, bytes], bytes]) -> Path:
    """A copy of `archive` with each member's bytes passed through `change`."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            data = change(member, data)
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out


def test_manifest_records_versions_checksums_provenance_and_scores(archive: Path) -> None:
    """release.json lists every file's sha256, each model's served version, the git commit and
    export command, and the dev scores the export measured; (archive).sha256 is sha256sum's."""
    release = read_release(archive)
    assert {n: m["version"] for n, m in release["models"].items()} == {
        "nli": 1,
        "sentiment": 2,
        "translator": 1,
    }
    assert "sentiment/2/model.onnx" in release["files"]
    assert "sentiment/1/model.onnx" not in release["files"]  # only the served version
    sentiment = release["models"]["sentiment"]
    assert len(sentiment["built_by"]["git"]["commit"]) == 40  # the tests run in a git checkout
    assert sentiment["built_by"]["export_command"]
    scores = {s["metric"]: s for s in sentiment["dev_scores"]}
    assert scores["accuracy"]["rows"] == len(DEV_ROWS)
    assert 0 <= scores["accuracy"]["value"] <= 1
    assert sum(map(sum, sentiment["dev_metrics"]["confusion_matrix"])) == len(DEV_ROWS)
    digest, name = archive.with_name(archive.name + ".sha256").read_text().split()
    assert name == archive.name and len(digest) == 64


def test_round_trip_unpacked_bundle_serves(
    archive: Path, tmp_path: Path, launch_server: Callable[..., ServerProcess]
) -> None:
    """pack -> unpack -> `python -m service --model-repository` on it -> one answered request."""
    out = tmp_path / "models"
    assert export_main(["unpack", str(archive), "--out", str(out)]) == 0
    card = (out / "sentiment" / "MODEL_CARD.md").read_text()
    assert "# sentiment (version 2)" in card and "Confusion matrix" in card
    assert "Intended use" in (out / "translator" / "MODEL_CARD.md").read_text()
    assert "`sentiment/2/README.md`" in card  # the export's own card travels with the version
    server = launch_server(out)
    response = httpx.post(f"{server.url}/v1/classify", json={"texts": ["a gem"]}, timeout=30)
    assert response.status_code == 200
    assert response.json()["version"] == "2"


def test_tar_xf_output_verifies_as_a_directory(archive: Path, tmp_path: Path) -> None:
    """Unpacking with plain `tar` gives a directory that `service.bundle verify` accepts."""
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    manifest = bundle.verify(tmp_path / "nlpserve-models")
    assert set(manifest.models) == {"nli", "sentiment", "translator"}


def refused(archive: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Unpacks `archive` expecting a refusal; returns the message. Nothing may be left behind."""
    assert export_main(["unpack", str(archive), "--out", str(out)]) == 1
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    return capsys.readouterr().err


def test_changed_file_is_refused(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def flip_one_byte(member: tarfile.TarInfo, data: bytes) -> bytes:
        if member.name.endswith("nli/1/model.onnx"):
            return data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data

    bad = rewrite(archive, tmp_path / "bad.tar.gz", flip_one_byte)
    message = refused(bad, tmp_path / "models", capsys)
    assert "nli/1/model.onnx does not match its sha256" in message


def test_truncated_archive_is_refused(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in refused(cut, tmp_path / "models", capsys)


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("nlpserve-models/../evil.txt", tarfile.REGTYPE, "points outside the bundle"),
        ("/tmp/evil.txt", tarfile.REGTYPE, "points outside the bundle"),
        ("nlpserve-models/sentiment/link", tarfile.SYMTYPE, "is a link or device"),
        ("elsewhere/evil.txt", tarfile.REGTYPE, "outside the top directory"),
    ],
)
def test_hostile_member_is_refused(
    archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    kind: bytes,
    expected: str,
) -> None:
    """Path traversal, absolute paths, links and stray top directories: nothing is written."""
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(hostile, "w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo(name)
        extra.type = kind
        extra.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        extra.size = 0 if kind == tarfile.SYMTYPE else 4
        dst.addfile(extra, None if kind == tarfile.SYMTYPE else io.BytesIO(b"evil"))
    work = tmp_path / "work"
    work.mkdir()
    assert expected in refused(hostile, work / "models", capsys)
    assert not (tmp_path / "evil.txt").exists()


def test_release_refuses_a_repository_with_a_corrupt_file(
    copy_repository: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = copy_repository()
    (repository / "translator" / "1" / "tokenizer.json").write_text("{}")
    out = tmp_path / "r.tar.gz"
    assert export_main(["release", "--repository", str(repository), "--out", str(out)]) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    assert list(tmp_path.glob("*r.tar.gz*")) == []


def test_model_card_names_the_data_and_its_license() -> None:
    """Cards name each recognised dataset of the recorded training files with its license."""
    from export.model_card import render

    entry = {
        "version": 2,
        "task": "text-pair-classification",
        "labels": ["entailment", "neutral", "contradiction"],
        "max_length": 128,
        "train_files": ["../shared/data/snli/train.tsv.gz", "../shared/data/mnli/dev_matched.tsv"],
        "built_by": {
            "training": {
                "train_args": {"teachers": ["runs/a", "runs/b"]},
                "averaged_from": [{"checkpoint": "runs/x", "best": {"dev_accuracy": 0.8945}}],
            }
        },
        "dev_scores": [
            {"metric": "accuracy", "value": 0.83, "data": "snli/dev.tsv", "measured_by": "x"}
        ],
    }
    card = render("nli", entry)
    assert "CC BY-SA 4.0" in card and "MultiNLI" in card
    assert "| accuracy | 0.83 | snli/dev.tsv |" in card
    assert "Distilled from the averaged predictions of runs/a, runs/b" in card
    assert "average of `runs/x` (best dev accuracy 0.8945)" in card
    assert "Training arguments (of the first averaged run)" in card


def test_dev_scores_say_what_measured_them() -> None:
    """Training's best dev evaluation and the export's reference-scored BLEU both become scores,
    each naming its data and how it was measured; BLEU against PyTorch's own output does not."""
    from export.release import dev_scores

    parity = {"beam_size": 4, "beam_bleu_ort": 38.68, "sentences": 200, "evaluated_on": "val.en"}
    manifest = {
        "parity": {"fp32_vs_pytorch": parity},
        "provenance": {
            "checkpoint": {
                "best": {"step": 1666, "dev_bleu": 35.66, "dev_chrf": 58.73, "dev_beam": 1},
                "train_args": {"dev_tgt": "val.de"},
            }
        },
    }
    scores = {s["metric"]: s for s in dev_scores(manifest)}
    assert scores["BLEU (greedy)"]["value"] == 35.66
    assert "step 1666" in scores["BLEU (greedy)"]["measured_by"]
    assert scores["chrF (greedy)"]["data"] == "val.de"
    assert scores["BLEU (beam 4)"]["rows"] == 200
    parity["bleu_references"] = "PyTorch greedy output (no reference file given)"
    assert "BLEU (beam 4)" not in {s["metric"] for s in dev_scores(manifest)}


def test_release_of_chosen_models_only(
    release_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "one.tar"
    args = ["release", "--repository", str(release_repository), "--out", str(out)]
    assert export_main([*args, "--models", "translator"]) == 0
    with tarfile.open(out) as tar:
        member = tar.extractfile("one/release.json")
        assert member is not None
        assert list(json.load(member)["models"]) == ["translator"]
    assert export_main([*args, "--models", "nope"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err


def test_archive_larger_than_the_free_disk_is_refused(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """A bundle that would fill the disk stops at the member that would not fit."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(bundle.shutil, "disk_usage", lambda _: usage._replace(free=10_000))
    assert "would fill the disk" in refused(archive, tmp_path / "models", capsys)
