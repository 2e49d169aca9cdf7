"""Validate every manifest in deploy/ offline, against schemas bundled in Python packages.

    python deploy/validate.py            # exit 0 when all are valid, 1 otherwise

- Kubernetes objects (the kustomize base and overlays as `kubectl kustomize` renders them; kubectl
  is on the development and CI machines): kubernetes-validate's bundled
  OpenAPI schemas in strict mode (unknown fields are errors), for the oldest Kubernetes we
  support and the newest bundled. 1.30 is the floor: the preStop `sleep` action is on by default
  from 1.30.
- The KServe InferenceService: a custom resource, so kubernetes-validate has no schema for it.
  Rather than skip it, deploy/schemas/ holds a subset of the KServe CRD schema whose containers,
  volumes and metadata refer to the same bundled Kubernetes core definitions.
- compose.yaml: the Compose Specification schema vendored by check-jsonschema.
- prometheus.yml: structure plus cross-checks against compose.yaml (no promtool offline).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

DEPLOY_DIR = Path(__file__).resolve().parent
KUBERNETES_VERSIONS = ("1.30", "1.37")
KUSTOMIZATIONS = ("base", "overlays/gpu")


def _errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def validate_kubernetes(resource: dict[str, Any]) -> list[str]:
    """Strict schema errors of one built-in Kubernetes object, for each supported version."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "<root>"
            errors.append(f"[k8s {version}] {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"[k8s {version}] {e.message}")
    return errors


@functools.cache
def _kserve_validator(version: str) -> jsonschema.protocols.Validator:
    schema_file = DEPLOY_DIR / "schemas" / "inferenceservice-serving-v1beta1.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    registry: Registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_inferenceservice(resource: dict[str, Any]) -> list[str]:
    return [
        f"[kserve, k8s {version}] {error}"
        for version in KUBERNETES_VERSIONS
        for error in _errors(_kserve_validator(version), resource)
    ]


def validate_resource(resource: dict[str, Any]) -> list[str]:
    if resource.get("apiVersion", "").startswith("serving.kserve.io/"):
        return validate_inferenceservice(resource)
    return validate_kubernetes(resource)


def validate_compose(compose: dict[str, Any]) -> list[str]:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    return _errors(jsonschema.Draft202012Validator(schema), compose)


def validate_prometheus(config: dict[str, Any], compose: dict[str, Any]) -> list[str]:
    """Every static target is host:port of a compose service exposing that port; /metrics."""
    errors = []
    jobs = config.get("scrape_configs") or []
    if not jobs:
        errors.append("no scrape_configs")
    for job in jobs:
        if "job_name" not in job:
            errors.append("a scrape config has no job_name")
        if job.get("metrics_path", "/metrics") != "/metrics":
            errors.append(f"{job.get('job_name')}: metrics_path is not /metrics")
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, _, port = target.partition(":")
                service = compose.get("services", {}).get(host)
                if service is None:
                    errors.append(f"target {target}: no compose service {host!r}")
                elif not any(str(p).endswith(f":{port}") for p in service.get("ports", [])):
                    errors.append(f"target {target}: service {host!r} does not expose {port}")
    return errors


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize DIRECTORY` renders (kubectl carries kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: its built-in kustomize renders deploy/ manifests")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    return [resource for resource in yaml.safe_load_all(rendered) if resource]


def _load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def validate_all(deploy_dir: Path = DEPLOY_DIR) -> dict[str, list[str]]:
    """{what: errors} for every manifest in deploy_dir; an empty list means valid."""
    results: dict[str, list[str]] = {}
    for name in KUSTOMIZATIONS:
        for resource in render_kustomization(deploy_dir / name):
            what = f"{name} (kustomized): {resource['kind']}/{resource['metadata']['name']}"
            results[what] = validate_resource(resource)
    for path in sorted((deploy_dir / "kserve").glob("*.yaml")):
        for resource in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if resource:
                name = f"{resource['kind']}/{resource['metadata']['name']}"
                results[f"{path.relative_to(deploy_dir)}: {name}"] = validate_resource(resource)
    compose = _load_yaml(deploy_dir / "compose.yaml")
    results["compose.yaml"] = validate_compose(compose)
    results["prometheus.yml"] = validate_prometheus(
        _load_yaml(deploy_dir / "prometheus.yml"), compose
    )
    return results


def main() -> int:
    failed = 0
    for what, errors in validate_all().items():
        print(f"{'ok  ' if not errors else 'FAIL'} {what}")
        for error in errors:
            print(f"     {error}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
