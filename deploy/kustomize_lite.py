"""Render a kustomization offline: the subset of kustomize that deploy/ uses, in plain Python.

    python deploy/kustomize_lite.py deploy/overlays/gpu > gpu.yaml

Machines without a kustomize binary (CI, no network) still need the rendered output to
validate it. Supported: `resources` (files and kustomization directories), `images`
(name/newName/newTag/digest on every containers[]/initContainers[] image) and `patches` given
as a file path holding a strategic-merge patch that names its target by kind and
metadata.name. Anything else in a kustomization.yaml is an error, never silently ignored; the
deploy tests compare this renderer with `kubectl kustomize` wherever kubectl is installed.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}

# Strategic merge: lists of these fields merge item by item on the key (as the Kubernetes API
# types declare with patchMergeKey); every other list is replaced by the patch's list.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}

Resource = dict[str, Any]


class KustomizeError(ValueError):
    pass


def _load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """Merge patch into a copy of base (maps recursively, keyed lists by MERGE_KEYS)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise KustomizeError(f"patch directives {sorted(patch)} are not supported")
        merged = dict(base)
        for key, value in patch.items():
            if value is None:  # `key: null` deletes, as in kustomize
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    merge_key = MERGE_KEYS.get(field or "")
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        merged_list = list(base)
        for item in patch:
            index = next(
                (i for i, old in enumerate(merged_list) if old.get(merge_key) == item[merge_key]),
                None,
            )
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _split_image(image: str) -> tuple[str, str, str]:
    """'repo/name:tag@sha256:..' -> (name, ':tag' or '', '@digest' or '')."""
    name, at, digest = image.partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > last_slash:  # a ':' after the last '/' is a tag, not a registry port
        name, tag = name[:colon], name[colon:]
    return name, tag, at + digest


def _set_images(node: Any, rules: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    container["image"] = _new_image(container["image"], rules)
            else:
                _set_images(value, rules)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, rules)


def _new_image(image: str, rules: list[dict[str, str]]) -> str:
    name, tag, digest = _split_image(image)
    for rule in rules:
        if rule["name"] != name:
            continue
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise KustomizeError(f"images: unsupported fields {sorted(unknown)}")
        name = rule.get("newName", name)
        if "digest" in rule:
            tag, digest = "", "@" + rule["digest"]
        elif "newTag" in rule:
            tag, digest = ":" + str(rule["newTag"]), ""
        break
    return name + tag + digest


def build(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would emit (same content; order may differ)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization keys {sorted(unsupported)}")

    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += build(path) if path.is_dir() else _load_documents(path)
    keys = [_key(r) for r in resources]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise KustomizeError(f"{directory}: duplicate resources {sorted(duplicates)}")

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: [{{path: FILE}}]` is supported")
        for patch in _load_documents(directory / patch_entry["path"]):
            index = next((i for i, r in enumerate(resources) if _key(r) == _key(patch)), None)
            if index is None:
                raise KustomizeError(f"{directory}: patch target {_key(patch)} not found")
            if patch.get("apiVersion") != resources[index].get("apiVersion"):
                raise KustomizeError(f"{directory}: patch {_key(patch)} apiVersion differs")
            resources[index] = strategic_merge(resources[index], patch)

    images = kustomization.get("images", [])
    for resource in resources:
        _set_images(resource, images)
    return resources


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python deploy/kustomize_lite.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        resources = build(Path(argv[0]))
    except (OSError, KustomizeError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(resources, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
