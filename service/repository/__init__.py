"""The model repository: its schema (`schema.py`, owned here and imported by `export/`) and its
reader (`reader.py`). Everything public is importable from `service.repository`.

Layout::

    <repository>/<name>/config.json          ModelConfig: task, labels, max_length, batching, ...
    <repository>/<name>/<version>/           integer directory names; the highest is served
        model.onnx, tokenizer.json            (classifier / NLI)
        encoder.onnx, decoder.onnx, tokenizer.json   (translator)
        manifest.json                        Manifest: sha256 of every other file, export facts
"""

from __future__ import annotations

from service.repository.reader import (
    ModelDirectory,
    ModelProblem,
    ModelVersion,
    RepositoryError,
    list_versions,
    model_directories,
    read_manifest,
    read_model,
    read_model_config,
    read_model_versions,
    read_verified,
    read_version,
    scan,
)
from service.repository.schema import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
    MODEL_NAME_PATTERN,
    REQUIRED_FILES,
    BatchingConfig,
    GenerationConfig,
    Manifest,
    ModelConfig,
    Precision,
    Task,
    VersionPolicy,
    sha256_bytes,
    sha256_file,
    utc_now_iso,
    write_manifest,
    write_model_config,
)

__all__ = [
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT_VERSION",
    "MODEL_NAME_PATTERN",
    "REQUIRED_FILES",
    "BatchingConfig",
    "GenerationConfig",
    "Manifest",
    "ModelConfig",
    "ModelDirectory",
    "ModelProblem",
    "ModelVersion",
    "Precision",
    "RepositoryError",
    "Task",
    "VersionPolicy",
    "list_versions",
    "model_directories",
    "read_manifest",
    "read_model",
    "read_model_config",
    "read_model_versions",
    "read_verified",
    "read_version",
    "scan",
    "sha256_bytes",
    "sha256_file",
    "utc_now_iso",
    "write_manifest",
    "write_model_config",
]
