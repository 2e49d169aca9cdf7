"""Reading the model repository: which versions of which models to serve, and their files.

Only directories whose name is a decimal integer are versions, so a writer can stage a version
under a dot-name and rename it into place. Reading never raises for one broken model: `scan` and
`read_model_versions` report a broken model or version (with a readable reason) beside the good
ones, so the service can serve the rest. File contents are checked against the manifest when the
engine reads them (`read_verified`), so what is verified is exactly what is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.repository.schema import (
    CONFIG_FILE,
    MANIFEST_FILE,
    REQUIRED_FILES,
    Manifest,
    ModelConfig,
    VersionPolicy,
    sha256_bytes,
    sha256_file,
)

logger = logging.getLogger(__name__)


class RepositoryError(Exception):
    """A model directory or version cannot be served; the message says why, for the log."""


@dataclass(frozen=True)
class ModelVersion:
    """One servable model version as found on disk (files not yet read)."""

    name: str
    version: int
    path: Path  # the version directory
    config: ModelConfig
    manifest: Manifest
    fingerprint: str = ""  # sha256 of manifest.json: a changed version is loaded again

    def read_verified(self, file_name: str) -> bytes:
        """The bytes of one file of this version, checked against the manifest's sha256."""
        return read_verified(self.path, self.manifest, file_name)

    def verify_others(self, loaded: tuple[str, ...]) -> None:
        """Check every file the manifest lists besides the `loaded` ones (already verified)."""
        for file_name in self.manifest.files:
            if file_name not in loaded:
                self.read_verified(file_name)


@dataclass(frozen=True)
class ModelProblem:
    """A model directory that cannot be served, and why (for the log and `/v1/models`)."""

    name: str
    reason: str


def _format_validation(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "(root)"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepositoryError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RepositoryError(f"{path} is not readable JSON: {e}") from None


def read_model_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    try:
        config = ModelConfig.model_validate(_read_json(path))
    except ValidationError as e:
        raise RepositoryError(f"{path} is invalid: {_format_validation(e)}") from None
    if config.name != model_dir.name:
        raise RepositoryError(
            f"{path} names the model {config.name!r} but its directory is {model_dir.name!r}"
        )
    return config


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST_FILE
    try:
        return Manifest.model_validate(_read_json(path))
    except ValidationError as e:
        raise RepositoryError(f"{path} is invalid: {_format_validation(e)}") from None


def read_verified(version_dir: Path, manifest: Manifest, file_name: str) -> bytes:
    """Read one file and check it against the manifest; RepositoryError if missing or changed."""
    expected = manifest.files.get(file_name)
    path = version_dir / file_name
    if expected is None:
        raise RepositoryError(f"{path} is not listed in {MANIFEST_FILE}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RepositoryError(f"{path} is missing") from None
    except OSError as e:
        raise RepositoryError(f"{path} cannot be read: {e}") from None
    if sha256_bytes(data) != expected:
        raise RepositoryError(f"{path} does not match its sha256 in {MANIFEST_FILE} (corrupt?)")
    return data


def list_versions(model_dir: Path) -> list[int]:
    """Integer version directories, ascending (dot-names and other entries are ignored)."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdecimal())


def read_model(model_dir: Path, pinned_version: int | None = None) -> ModelVersion:
    """The version to serve from one model directory; RepositoryError says why not."""
    config = read_model_config(model_dir)
    versions = list_versions(model_dir)
    if not versions:
        raise RepositoryError(f"{model_dir} has no version directories (integer names)")
    if pinned_version is None:
        version = versions[-1]
    elif pinned_version in versions:
        version = pinned_version
    else:
        raise RepositoryError(
            f"{model_dir}: pinned version {pinned_version} does not exist (found {versions})"
        )
    return read_version(model_dir / str(version), config)


def read_version(version_dir: Path, config: ModelConfig) -> ModelVersion:
    """One version directory of a model whose config is `config`; RepositoryError says why not."""
    manifest = read_manifest(version_dir)
    missing = [f for f in REQUIRED_FILES[config.task] if f not in manifest.files]
    if missing:
        raise RepositoryError(
            f"{version_dir / MANIFEST_FILE} does not list {', '.join(missing)}, "
            f"which a {config.task} model needs"
        )
    try:
        fingerprint = sha256_file(version_dir / MANIFEST_FILE)
    except OSError as e:  # replaced between the two reads
        raise RepositoryError(f"{version_dir / MANIFEST_FILE} cannot be read: {e}") from None
    return ModelVersion(
        config.name, int(version_dir.name), version_dir, config, manifest, fingerprint
    )


@dataclass(frozen=True)
class ModelDirectory:
    """One model directory as its version policy selects it: the versions to serve (readable
    ones) and, by version, why a selected version cannot be read. `config` is None when
    config.json itself is broken (`problem` says why)."""

    name: str
    config: ModelConfig | None
    versions: list[ModelVersion]
    broken: dict[int, str]
    problem: str | None = None

    @property
    def selected(self) -> set[int]:
        return {v.version for v in self.versions} | set(self.broken)


def read_model_versions(model_dir: Path, pinned_version: int | None = None) -> ModelDirectory:
    """Every version of one model directory its version policy (or a pin) selects; never raises
    for a broken directory or version (they are reported in the result)."""
    name = model_dir.name
    try:
        config = read_model_config(model_dir)
        available = list_versions(model_dir)
    except (RepositoryError, OSError) as e:
        return ModelDirectory(name, None, [], {}, str(e))
    if not available:
        return ModelDirectory(
            name, config, [], {}, f"{model_dir} has no version directories (integer names)"
        )
    if pinned_version is not None:
        policy = VersionPolicy(specific=[pinned_version])
    else:
        policy = config.version_policy or VersionPolicy(latest=1)
    selected = policy.select(available)
    if not selected:
        return ModelDirectory(
            name, config, [], {}, f"{model_dir}: no version {policy.specific} (found {available})"
        )
    versions, broken = [], {}
    for number in selected:
        try:
            versions.append(read_version(model_dir / str(number), config))
        except RepositoryError as e:
            broken[number] = str(e)
    return ModelDirectory(name, config, versions, broken)


def model_directories(repository: Path) -> list[Path]:
    """The model directories of a repository (non-hidden directories), sorted by name."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} is not a directory")
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(
    repository: Path, pinned: Mapping[str, int] | None = None
) -> tuple[list[ModelVersion], list[ModelProblem]]:
    """Every model directory of the repository: the servable versions and the problems.

    A model directory is any non-hidden directory; one that is broken is reported, never raised,
    so one bad model cannot take the others down.
    """
    pinned = dict(pinned or {})
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} is not a directory")
    found: list[ModelVersion] = []
    problems: list[ModelProblem] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if model_dir.name.startswith("."):
            continue
        try:
            found.append(read_model(model_dir, pinned.pop(model_dir.name, None)))
        except RepositoryError as e:
            problems.append(ModelProblem(model_dir.name, str(e)))
    for name in pinned:
        logger.warning("a version is pinned for model %r, which is not in %s", name, repository)
    return found, problems
