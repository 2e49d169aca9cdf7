"""Writing a model version into the model repository, all or nothing.

Every export builds its files in a private staging directory. Only after every parity check has
passed does `publish` move the finished version into `<repository>/<name>/<version>/` (a rename
inside the repository's filesystem, so the service never sees a half-written version) and write
`<repository>/<name>/config.json`. A failed export therefore leaves the repository untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from service import repository as repository_schema

logger = logging.getLogger(__name__)


class BatchingDefaults(Protocol):
    """The batching fields of an export job (written into the model's config.json)."""

    max_batch_size: int
    max_batch_tokens: int
    max_queue_delay_ms: float


def batching_config(job: BatchingDefaults, max_length: int) -> dict[str, Any]:
    """config.json's "batching": the job's defaults, with room for one max_length sequence."""
    return {
        "max_batch_size": job.max_batch_size,
        "max_batch_tokens": max(job.max_batch_tokens, max_length),
        "max_queue_delay_ms": job.max_queue_delay_ms,
    }


class PublishError(RuntimeError):
    """The version cannot be written (e.g. it already exists)."""


def existing_versions(repository: Path, name: str) -> list[int]:
    model_dir = repository / name
    if not model_dir.is_dir():
        return []
    return repository_schema.list_versions(model_dir)


def resolve_version(repository: Path, name: str, version: int | None) -> int:
    """The requested version, or one past the highest existing version (1 for a new model)."""
    versions = existing_versions(repository, name)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if version < 1:
        raise PublishError(f"version must be a positive integer, got {version}")
    if version in versions:
        raise PublishError(
            f"{repository / name / str(version)} already exists; pick another --version"
        )
    return version


@contextlib.contextmanager
def staging_dir(prefix: str = "nlpserve-export-") -> Iterator[Path]:
    """A temporary directory that is always removed, whether the export succeeded or not."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_manifest(version_dir: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """manifest.json with the sha256 of every other file, validated by the service's schema."""
    manifest = repository_schema.write_manifest(version_dir, fields)
    return manifest.model_dump(mode="json")


def verify_manifest(version_dir: Path) -> list[str]:
    """Names of files whose checksum does not match the manifest (or that are missing)."""
    manifest = repository_schema.read_manifest(version_dir)
    bad = []
    for name in manifest.files:
        try:
            repository_schema.read_verified(version_dir, manifest, name)
        except repository_schema.RepositoryError:
            bad.append(name)
    return bad


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def publish(
    staged: Path,
    repository: Path,
    name: str,
    version: int,
    model_config: repository_schema.ModelConfig,
) -> Path:
    """Move a finished version directory into the repository; returns the version directory.

    The files are first copied next to their destination under a dot-name (ignored by the
    reader, which only loads integer directory names) and then renamed into place, so the
    version appears at once. The model's config.json is written (atomically) before the version
    becomes visible, so a reader never finds a version without its config.
    """
    model_dir = repository / name
    final = model_dir / str(version)
    if final.exists():
        raise PublishError(f"{final} already exists")
    model_dir.mkdir(parents=True, exist_ok=True)
    partial = model_dir / f".{version}.partial-{os.getpid()}"
    try:
        shutil.copytree(staged, partial)
        config_text = model_config.model_dump_json(indent=2, exclude_none=True) + "\n"
        _write_text_atomic(model_dir / repository_schema.CONFIG_FILE, config_text)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("published %s", final)
    return final
