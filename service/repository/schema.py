"""The model repository's file formats, owned here and imported by `export/`: `config.json`
(`ModelConfig`) and `manifest.json` (`Manifest`), and the helpers that write them.

Schema stability: `ModelConfig` and `Manifest` are format version 1. New optional fields with
defaults may be added; renaming or removing a field needs a new format version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUE_DELAY_MS,
    MAX_BEAM_SIZE,
    MAX_NEW_TOKENS,
)

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT_VERSION = 1

Task = Literal["text-classification", "text-pair-classification", "translation"]
Precision = Literal["fp32", "int8", "fp16"]

# Model names appear in URLs and metric labels, so they are kept to a URL-safe, short alphabet.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# The files each task's engine loads; a version lacking one (in the manifest) is not servable.
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "text-classification": ("model.onnx", "tokenizer.json"),
    "text-pair-classification": ("model.onnx", "tokenizer.json"),
    "translation": ("encoder.onnx", "decoder.onnx", "tokenizer.json"),
}


# --------------------------------------------------------------------------- config.json schema


class BatchingConfig(BaseModel):
    """Dynamic batching limits of one model (every one can be overridden by the service)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=4096, description="sequences per batch"
    )
    max_batch_tokens: int = Field(
        default=DEFAULT_MAX_BATCH_TOKENS,
        ge=1,
        description="padded tokens per batch (batch size x longest sequence)",
    )
    max_queue_delay_ms: float = Field(
        default=DEFAULT_MAX_QUEUE_DELAY_MS,
        ge=0,
        le=60_000,
        description="how long a batch may wait for more requests after its first one while the "
        "engine is free: 0 (CPU) runs at once and lets batches grow while the engine is busy; "
        "a few ms pays off where bigger batches are nearly free (GPU)",
    )


class GenerationConfig(BaseModel):
    """Decoding defaults and special token ids of a translation model."""

    model_config = ConfigDict(extra="forbid")

    beam_size: int = Field(default=4, ge=1, le=MAX_BEAM_SIZE, description="1 = greedy")
    max_new_tokens: int = Field(default=128, ge=1, le=MAX_NEW_TOKENS)
    length_penalty: float = Field(default=1.0, ge=0, le=10)
    # The translator's fixed special ids (model_src.translator.tokenizer); export writes them.
    pad_token_id: int = Field(default=0, ge=0)
    bos_token_id: int = Field(default=1, ge=0, description="the decoder's first input (<sos>)")
    eos_token_id: int = Field(default=2, ge=0)


class VersionPolicy(BaseModel):
    """Which versions of a model serve side by side (Triton's version_policy): the `latest` N
    versions, or the `specific` ones listed. The highest serving version is the default."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(default=None, ge=1, le=64, description="the N highest versions")
    specific: list[int] | None = Field(default=None, min_length=1, description="these versions")

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if (self.latest is None) == (self.specific is None):
            raise ValueError("give either latest or specific")
        if self.specific is not None and any(v < 1 for v in self.specific):
            raise ValueError("versions are positive integers")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of `available` (ascending)."""
        if self.specific is not None:
            return [v for v in available if v in self.specific]
        return available[-(self.latest or 1) :]


class ModelConfig(BaseModel):
    """`<repository>/<name>/config.json`: what a model does and how to batch it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    task: Task
    labels: list[str] | None = Field(default=None, description="class names; classification only")
    max_length: int = Field(
        default=128, ge=2, le=8192, description="tokens; longer inputs are truncated (or rejected)"
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    generation: GenerationConfig | None = Field(default=None, description="translation only")
    description: str | None = None
    version_policy: VersionPolicy | None = Field(
        default=None, description="versions served side by side; default: the latest one"
    )

    @model_validator(mode="after")
    def _check_task_fields(self) -> ModelConfig:
        if self.task == "translation":
            if self.labels is not None:
                raise ValueError("labels are for classification tasks, not translation")
            if self.generation is None:
                self.generation = GenerationConfig()
        else:
            if not self.labels or len(self.labels) < 2:
                raise ValueError(f"task {self.task} needs at least two labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"labels must be distinct, got {self.labels}")
            if self.generation is not None:
                raise ValueError("generation settings are for translation only")
        if self.batching.max_batch_tokens < self.max_length:
            raise ValueError(
                f"batching.max_batch_tokens ({self.batching.max_batch_tokens}) must be at least "
                f"max_length ({self.max_length}), or a full-length input could never be batched"
            )
        return self


# ------------------------------------------------------------------------- manifest.json schema


class Manifest(BaseModel):
    """`<repository>/<name>/<version>/manifest.json`: checksums and how the version was made.

    Unknown keys are kept (extra="allow"): the manifest is a record, and an exporter may add facts
    (library versions, timings) the service does not need.
    """

    model_config = ConfigDict(extra="allow")

    format_version: Literal[1] = 1
    files: dict[str, str] = Field(description="relative path -> sha256 hex of every other file")
    opset: int | None = None
    exporter: str | None = None
    source_checkpoint: str | None = None
    precision: Precision = "fp32"
    quantization: dict[str, Any] | None = None
    optimizations: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    exported_at: str | None = Field(default=None, description="ISO 8601, UTC")

    @field_validator("files")
    @classmethod
    def _check_files(cls, files: dict[str, str]) -> dict[str, str]:
        if not files:
            raise ValueError("files must list at least one file")
        for name, digest in files.items():
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or name in ("", MANIFEST_FILE):
                raise ValueError(f"file name {name!r} must be a relative path inside the version")
            if not _SHA256.match(digest):
                raise ValueError(f"checksum of {name!r} is not a lowercase sha256 hex digest")
        return files

    @field_validator("exported_at")
    @classmethod
    def _check_time(cls, value: str | None) -> str | None:
        if value is not None:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))  # ValueError if not ISO 8601
        return value


# ------------------------------------------------------------------------------ writer helpers


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now_iso() -> str:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def write_manifest(version_dir: Path, fields: Mapping[str, Any]) -> Manifest:
    """Write `version_dir/manifest.json`: the sha256 of every other file there plus `fields`.

    `fields` holds the other Manifest keys (opset, exporter, precision, parity, ...); they are
    validated, so a bad value fails the export rather than the server. `exported_at` defaults to
    now (UTC).
    """
    version_dir = Path(version_dir)
    files = {
        p.relative_to(version_dir).as_posix(): sha256_file(p)
        for p in sorted(version_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    data = {"exported_at": utc_now_iso(), **fields, "files": files}
    manifest = Manifest.model_validate(data)
    text = manifest.model_dump_json(indent=2, exclude_none=False)
    (version_dir / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
    return manifest


def write_model_config(model_dir: Path, config: ModelConfig) -> Path:
    """Write `model_dir/config.json` from a validated ModelConfig."""
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(config.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")
    return path
