"""deploy/compose.yaml as a user runs it after `make demo`, without a container engine.

The test reads the compose file, resolves what its nlpserve service would run (the Dockerfile
stage it builds: ENTRYPOINT, ENV; then the service's own command and environment), checks that
the folder it mounts at /models is the one `make demo` writes, and starts that command line with
the tiny demo-like repository in the folder's place. The server must turn ready and the image's
HEALTHCHECK must pass: Prometheus waits on it (`depends_on: service_healthy`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

from loadtests.servers import free_port, wait_ready
from tests.test_deploy_manifests import DEPLOY, ROOT, dockerfile_stages, image_env

COMPOSE = DEPLOY / "compose.yaml"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` substitution."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", value
    )


def compose_service(name: str = "nlpserve") -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


def mounted_host_path(service: dict, container_path: str, env: dict[str, str]) -> Path:
    for volume in service["volumes"]:
        host, target, *_ = interpolate(volume, env).split(":")
        if target == container_path:
            return (COMPOSE.parent / host).resolve()
    raise AssertionError(f"nothing mounted at {container_path}")


def test_compose_mounts_the_folder_make_demo_writes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    runs = re.search(r"^RUNS \?= (\S+)", makefile, re.M).group(1)  # type: ignore[union-attr]
    demo_repo = re.search(r"^DEMO_REPO := (\S+)", makefile, re.M).group(1)  # type: ignore[union-attr]
    expected = (ROOT / demo_repo.replace("$(RUNS)", runs)).resolve()
    assert mounted_host_path(compose_service(), "/models", {}) == expected
    # and MODEL_REPOSITORY points it at `make models`' output instead
    env = {"MODEL_REPOSITORY": "../model_repository"}
    assert mounted_host_path(compose_service(), "/models", env) == ROOT / "model_repository"


def test_serve_extras_never_install_both_onnxruntime_builds() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def resolved(extra: str) -> set[str]:
        names = set()
        for requirement in extras[extra]:
            name = re.split(r"[<>=\[; ]", requirement, maxsplit=1)[0]
            if name == "nlpserve":
                for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):  # type: ignore[union-attr]
                    names |= resolved(inner.strip())
            else:
                names.add(name)
        return names

    assert "onnxruntime" in resolved("serve") and "onnxruntime-gpu" not in resolved("serve")
    assert "onnxruntime-gpu" in resolved("gpu") and "onnxruntime" not in resolved("gpu")
    assert resolved("serve") - {"onnxruntime"} == resolved("gpu") - {"onnxruntime-gpu"}


def test_compose_command_line_serves_the_demo_repository_ready_and_healthy(
    model_repository: Path, tmp_path: Path
) -> None:
    service = compose_service()
    stage = dict(dockerfile_stages()[service["build"]["target"]])
    entrypoint = service.get("entrypoint") or json.loads(stage["ENTRYPOINT"])
    command = [*entrypoint, *service.get("command", [])]
    assert command[0] == "nlpserve"  # the console script; here the same module, run by path
    command = [sys.executable, "-m", "nlpserve_cli", *command[1:]]
    env = {**image_env(service["build"]["target"]), **service["environment"]}
    assert env["NLPSERVE_MODEL_REPOSITORY"] == "/models"
    port = free_port()
    published = [p for p in service["ports"] if p.endswith(f":{env['NLPSERVE_PORT']}")]
    assert published, "the container port is not published"
    env.update(
        NLPSERVE_MODEL_REPOSITORY=str(model_repository),  # the demo-like repository at /models
        NLPSERVE_PORT=str(port),
        NLPSERVE_HOST="127.0.0.1",  # 0.0.0.0 inside the container; loopback here
        NLPSERVE_INTRA_OP_THREADS="1",
        NLPSERVE_GRPC_PORT=str(free_port()),  # the default 8001 could be taken here
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NLPSERVE_")}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        command, env={**environ, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=60)
        healthcheck = json.loads(stage["HEALTHCHECK"].split(" CMD ", 1)[1])
        healthcheck = [
            sys.executable if a == "python" else a.replace(":8000/", f":{port}/")
            for a in healthcheck
        ]
        assert subprocess.run(healthcheck, timeout=10).returncode == 0  # Prometheus starts now
    finally:
        server.terminate()
        server.wait(timeout=40)
        log.close()
