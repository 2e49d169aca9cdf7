"""`python -m export release --repository DIR --out FILE`: a model repository as one archive.

The archive holds the served (highest) version of every model, each model's config.json and a
MODEL_CARD.md, and a top-level release.json (schema and reader: `service.bundle`) with the sha256
of every file, each model's version, how it was built (git commit, export command, the training
run's recorded arguments) and its dev scores as the manifests recorded them. Nothing is packed
unless every model of the repository is servable and every file matches its manifest.
A `FILE.sha256` line (`sha256sum -c` format) is written beside the archive.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from export import model_card, provenance
from service import bundle, repository

PACKED_MODE = {"file": 0o644, "dir": 0o755}


class ReleaseError(RuntimeError):
    """The repository cannot be released as it is; the message says why."""


def _train_files(train_args: dict[str, Any]) -> list[str]:
    files: list[str] = []
    for key in ("train", "train_src", "train_tgt"):
        value = train_args.get(key)
        files += [str(v) for v in value] if isinstance(value, list) else [str(value)] * bool(value)
    return files


def dev_scores(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every dev score recorded for a version, each with what measured it, on which data."""
    scores: list[dict[str, Any]] = []
    onnx_dev = manifest.get("dev_metrics")
    if onnx_dev:
        for metric in ("accuracy", "macro_f1"):
            scores.append(
                {
                    "metric": metric,
                    "value": onnx_dev[metric],
                    "data": onnx_dev["data"],
                    "rows": onnx_dev["rows"],
                    "measured_by": "the exported ONNX graph, at export",
                }
            )
    checkpoint = (manifest.get("provenance") or {}).get("checkpoint") or {}
    best, args = checkpoint.get("best") or {}, checkpoint.get("train_args") or {}
    dev_rows = (checkpoint.get("data") or {}).get("dev_pairs")  # the translator records it
    during_training = f"PyTorch, best dev evaluation during training (step {best.get('step')})"
    for metric in ("dev_accuracy", "dev_macro_f1"):
        if best.get(metric) is not None:
            scores.append(
                {
                    "metric": metric.removeprefix("dev_"),
                    "value": best[metric],
                    "data": args.get("dev"),
                    "measured_by": during_training,
                }
            )
    beam = best.get("dev_beam", 1)
    for metric, label in (("dev_bleu", "BLEU"), ("dev_chrf", "chrF")):
        if best.get(metric) is not None:
            scores.append(
                {
                    "metric": f"{label} ({'greedy' if beam == 1 else f'beam {beam}'})",
                    "value": best[metric],
                    "data": args.get("dev_tgt"),
                    "rows": dev_rows,
                    "measured_by": during_training,
                }
            )
    parity = ((manifest.get("parity") or {}).get("fp32_vs_pytorch")) or {}
    if "beam_bleu_ort" in parity and "bleu_references" not in parity:  # scored on references
        scores.append(
            {
                "metric": f"BLEU (beam {parity['beam_size']})",
                "value": parity["beam_bleu_ort"],
                "data": parity.get("evaluated_on"),
                "rows": parity["sentences"],
                "measured_by": "the exported ONNX graphs, at export (parity check)",
            }
        )
    return scores


def release_entry(model: repository.ModelVersion) -> dict[str, Any]:
    """release.json's `models.<name>`: version, task, how it was built, its dev scores."""
    manifest = model.manifest.model_dump(mode="json")
    built = manifest.get("provenance") or {}
    checkpoint = dict(built.get("checkpoint") or {})
    path = checkpoint.pop("path", None) or manifest.get("source_checkpoint")
    return {
        "version": model.version,
        "task": model.config.task,
        "card": f"{model.name}/{bundle.CARD_FILE}",
        # The export's own card (Hugging Face layout), when that export wrote one.
        "export_card": f"{model.name}/{model.version}/README.md"
        if "README.md" in model.manifest.files
        else None,
        "labels": model.config.labels,
        "max_length": model.config.max_length,
        "precision": manifest["precision"],
        "exported_at": manifest.get("exported_at"),
        "built_by": {
            "git": built.get("git"),
            "export_command": built.get("export_command"),
            "checkpoint": path,
            "training": checkpoint or None,
        },
        "train_files": _train_files(checkpoint.get("train_args") or {}),
        "dev_scores": dev_scores(manifest),
        "dev_metrics": manifest.get("dev_metrics"),
    }


def servable_models(repo: Path, names: list[str] | None) -> list[repository.ModelVersion]:
    """The models to release, each verified file by file against its manifest."""
    try:
        found, problems = repository.scan(repo)
    except repository.RepositoryError as e:
        raise ReleaseError(str(e)) from None
    problems = [p for p in problems if not names or p.name in names]
    if problems:
        raise ReleaseError(
            "; ".join(f"model {p.name} is not servable: {p.reason}" for p in problems)
        )
    by_name = {m.name: m for m in found}
    unknown = sorted(set(names or ()) - set(by_name))
    if unknown:
        raise ReleaseError(f"no model {unknown[0]!r} in {repo} (found {sorted(by_name)})")
    models = [by_name[n] for n in names] if names else found
    if not models:
        raise ReleaseError(f"{repo} holds no models")
    for model in models:
        try:
            model.verify_others(())
        except repository.RepositoryError as e:
            raise ReleaseError(str(e)) from None
    return models


def _add(tar: tarfile.TarFile, name: str, data: bytes | Path, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uname, info.gname = PACKED_MODE["file"], mtime, "", ""
    if isinstance(data, Path):
        info.size = data.stat().st_size
        with data.open("rb") as f:
            tar.addfile(info, f)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def top_directory(out: Path) -> str:
    """The archive's top directory: its file name without .tar/.tar.gz/.tgz."""
    name = out.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ReleaseError(f"--out {out} must end in .tar.gz, .tgz or .tar")


def build_release(repo: Path, out: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Write the archive `out`; returns its release.json content."""
    out = Path(out)
    top = top_directory(out)
    models = servable_models(Path(repo), names)
    # (path inside the bundle, source file or generated bytes), release.json excluded.
    contents: list[tuple[str, Path | bytes]] = []
    entries: dict[str, Any] = {}
    for model in models:
        entry = release_entry(model)
        entries[model.name] = entry
        model_dir = model.path.parent
        card = model_card.render(model.name, entry).encode("utf-8")
        contents.append((f"{model.name}/{repository.CONFIG_FILE}", model_dir / "config.json"))
        contents.append((entry["card"], card))
        for file_name in [repository.MANIFEST_FILE, *sorted(model.manifest.files)]:
            contents.append((f"{model.name}/{model.version}/{file_name}", model.path / file_name))
    files = {
        name: repository.sha256_file(src) if isinstance(src, Path) else repository.sha256_bytes(src)
        for name, src in contents
    }
    release = {
        "format": "nlpserve-release",
        "format_version": 1,
        "created_at": repository.utc_now_iso(),
        "created_by": {"git": provenance.git_state(), "command": provenance.process_command()},
        "models": entries,
        "files": files,
    }
    bundle.ReleaseManifest.model_validate(release)  # what the reader will accept
    release_bytes = (json.dumps(release, indent=2) + "\n").encode("utf-8")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    mtime = int(time.time())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        gz = out.name.endswith(("gz", "tgz"))
        with tarfile.open(partial, "w:gz") if gz else tarfile.open(partial, "w") as tar:
            _add(tar, f"{top}/{bundle.RELEASE_FILE}", release_bytes, mtime)
            for name, src in contents:
                _add(tar, f"{top}/{name}", src, mtime)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    digest = repository.sha256_file(out)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n", encoding="utf-8")
    return release


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, required=True, help="model repository root")
    parser.add_argument("--out", type=Path, required=True, help="archive: .tar.gz, .tgz or .tar")
    parser.add_argument("--models", nargs="+", help="only these models (default: every model)")


def run(args: argparse.Namespace) -> int:
    try:
        release = build_release(args.repository, args.out, args.models)
    except ReleaseError as e:
        print(f"error: {e}; nothing was written", file=sys.stderr)
        return 2
    summary = {name: m["version"] for name, m in release["models"].items()}
    print(f"wrote {args.out} ({len(release['files'])} files): {json.dumps(summary)}")
    print(f"unpack and check with: python -m export unpack {args.out} --out DIR")
    return 0


def add_unpack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", type=Path, help="a release archive")
    parser.add_argument("--out", type=Path, required=True, help="the model repository to create")


def run_unpack(args: argparse.Namespace) -> int:
    """`python -m service.bundle unpack`, also here beside `release` (the serving image has
    only `service/`)."""
    return bundle.main(["unpack", str(args.archive), "--out", str(args.out)])
