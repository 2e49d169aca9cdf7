"""What the Open Inference Protocol says about models, in its JSON form, for HTTP and gRPC alike:
metadata, Triton's model configuration, the statistics extension and the repository index.

The gRPC service parses these same dicts into its protobuf messages (`json_format.ParseDict`), so
each fact is written once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.errors import ErrorKind, ServiceError
from service.registry import ModelRegistry
from service.repository import ModelConfig, RepositoryError, model_directories
from service.served_model import LoadedModel, ModelState, ServedModel, batch_policy
from service.settings import Settings
from service.stats import ModelStatistics

# Input tensor names by task; every input is BYTES [N] (or [N, 1]).
INPUTS = {
    "text-classification": ("text",),
    "text-pair-classification": ("premise", "hypothesis"),
    "translation": ("text",),
}
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = [  # of the protocol, as server metadata lists them
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "schedule_policy",
]


def config_of(model: ServedModel) -> ModelConfig:
    if model.config is None:
        raise ServiceError(
            ErrorKind.NOT_READY, f"model {model.name!r} failed to load (see the server log)"
        )
    return model.config


def _tensors(config: ModelConfig) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(inputs, outputs) as (name, datatype, elements per item; 0: one scalar per item)."""
    inputs = [(n, "BYTES", 0) for n in INPUTS[config.task]]
    if config.task == "translation":
        return inputs, [("translation", "BYTES", 0)]
    assert config.labels is not None
    return inputs, [("label", "BYTES", 0), ("probabilities", "FP32", len(config.labels))]


def metadata(model: ServedModel, registry: ModelRegistry) -> dict[str, Any]:
    """Model metadata: every version serving beside this one, and its tensors ([-1] = batch)."""
    inputs, outputs = _tensors(config_of(model))

    def describe(name: str, datatype: str, width: int) -> dict[str, Any]:
        return {"name": name, "datatype": datatype, "shape": [-1, width] if width else [-1]}

    versions = [m.version_str for m in registry.versions(model.name) if m.version_str]
    return {
        "name": model.name,
        "versions": versions or ([model.version_str] if model.version_str else []),
        "platform": PLATFORM,
        "inputs": [describe(*t) for t in inputs],
        "outputs": [describe(*t) for t in outputs],
    }


def model_config(model: ServedModel, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration (model_config.proto in its JSON form). Batching is on the
    first dimension: an item is one text (`dims` [1], reshaped to a scalar, so [N] tensors are
    what clients send), `max_batch_size` is the most items one request may hold."""
    config = config_of(model)
    policy = batch_policy(model, config, settings)
    inputs, outputs = _tensors(config)

    def tensor(name: str, datatype: str, width: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "data_type": _TYPES[datatype]}
        entry["dims"] = [width] if width else [1]
        if not width:
            entry["reshape"] = {"shape": []}
        return entry

    if config.version_policy is not None and config.version_policy.specific is not None:
        version_policy: dict[str, Any] = {"specific": {"versions": config.version_policy.specific}}
    else:
        latest = config.version_policy.latest if config.version_policy else 1
        version_policy = {"latest": {"num_versions": latest}}
    gpu = (model.provider or "").startswith("CUDA")
    parameters = {
        "task": config.task,
        "max_length": str(config.max_length),
        "max_batch_tokens": str(policy.max_batch_tokens),
    }
    if config.labels:
        parameters["labels"] = ",".join(config.labels)
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": settings.max_items_per_request,
        "input": [tensor(*t) for t in inputs],
        "output": [tensor(*t) for t in outputs],
        "dynamic_batching": {
            "preferred_batch_size": [policy.max_batch_size],
            "max_queue_delay_microseconds": round(policy.max_queue_delay_s * 1_000_000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(settings.request_timeout_s * 1_000_000),
                "max_queue_size": policy.max_queue_size,
            },
        },
        "instance_group": [
            {
                "name": f"{model.name}_0",
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": policy.max_concurrent_runs,
            }
        ],
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
    }


_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}


def statistics(
    registry: ModelRegistry, name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """The statistics extension: every version of every model, of one model, or one version."""
    if name is None:
        models = [m for m in registry.all_versions() if m.version is not None]
    elif version is not None:
        models = [registry.get(name, version)]
    else:
        registry.get(name)  # NOT_FOUND for an unknown model
        models = registry.versions(name)
    return {
        "model_stats": [
            (
                m.stats if isinstance(m, LoadedModel) else ModelStatistics(m.name, m.version_str)
            ).as_json()
            for m in models
        ]
    }


_STATES = {
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.FAILED: "UNAVAILABLE",
    ModelState.RETIRED: "UNLOADING",
}


def repository_index(
    registry: ModelRegistry, repository: Path, ready_only: bool = False
) -> list[dict[str, Any]]:
    """Every model of the repository: each served version with its state (and why a version is
    unavailable), and the models on disk that are not loaded."""
    index: list[dict[str, Any]] = []
    served = {m.name for m in registry.all_versions()}
    for m in registry.all_versions():
        entry: dict[str, Any] = {"name": m.name, "state": _STATES[m.state]}
        if m.version_str:
            entry["version"] = m.version_str
        if m.state is not ModelState.READY:
            # The log's wording, without the server's own paths.
            entry["reason"] = (m.reason or "").replace(f"{repository}/", "")
        index.append(entry)
    try:
        on_disk = [d.name for d in model_directories(repository)]
    except RepositoryError:
        on_disk = []
    for name in on_disk:
        if name not in served:
            index.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
    if ready_only:
        index = [e for e in index if e["state"] == "READY"]
    return sorted(index, key=lambda e: (e["name"], int(e.get("version", 0))))
