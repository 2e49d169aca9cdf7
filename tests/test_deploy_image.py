"""The container image's command, run the way the image runs it, without a container engine.

The CPU stage of the Dockerfile copies pyproject.toml, README.md, service/ and nlpserve_cli/
into a fresh virtualenv, installs `.[serve]` and runs its ENTRYPOINT. This test does the same in
a tmp dir: a new `python -m venv`, `pip install ".[serve]"` (it downloads the wheels from PyPI:
about 30-60 s on our 2-core machines, where pip's HTTP cache does not persist), then the exact
ENTRYPOINT with the image's NLPSERVE_* environment (only the model repository path and the port
swapped for tmp ones) and an option appended as `docker run IMAGE --option` does, from a working
directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from loadtests.servers import free_port, wait_ready
from tests.test_deploy_manifests import dockerfile_stages, image_env

ROOT = Path(__file__).resolve().parents[1]


def image_copy_sources(stage: str) -> list[str]:
    """The build context paths a build stage COPYs (not --from other stages)."""
    sources = []
    for op, args in dockerfile_stages()[stage]:
        if op == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    return sources


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding the project's `serve` extras, built like the CPU image's."""
    tmp = tmp_path_factory.mktemp("image")
    src = tmp / "src"
    src.mkdir()
    for source in image_copy_sources("cpu-build"):  # pyproject.toml README.md service/ ...
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / source)
    venv = tmp / "venv"
    # Without its own pip (ensurepip takes ~10 s): this process's pip installs into it with
    # --python, so the venv ends up holding only the project and its `serve` extras.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    install = [*pip, "install", "--quiet", "--disable-pip-version-check", f"{src}[serve]"]
    subprocess.run(install, check=True, timeout=600)
    return venv


def test_serve_venv_has_no_torch_and_no_training_code(serve_venv: Path) -> None:
    """The `serve` extras bring neither PyTorch nor model_src/export: the image stays small."""
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ('torch', 'model_src', 'export', 'service', 'nlpserve_cli', 'onnxruntime')}))"
    )
    out = subprocess.run(
        [str(serve_venv / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, check=True, cwd=serve_venv,
    ).stdout  # fmt: skip
    assert json.loads(out) == {
        "torch": False,
        "model_src": False,
        "export": False,
        "service": True,
        "nlpserve_cli": True,
        "onnxruntime": True,
    }


@pytest.mark.timeout(300)
def test_image_command_serves_from_the_serve_only_venv(
    serve_venv: Path, model_repository: Path, tmp_path: Path
) -> None:
    """The CPU image's ENTRYPOINT (the `nlpserve` script of the serve-only venv) starts the
    service on the shared tiny repository (sentiment, nli, translator) with an appended option;
    it turns ready, classifies, answers over gRPC, and exits cleanly on SIGTERM (docker stop,
    Kubernetes)."""
    cpu = dockerfile_stages()["cpu"]
    command = [
        *json.loads(dict(cpu)["ENTRYPOINT"]),
        "--max-batch-size",
        "8",
    ]  # docker run IMAGE --max-batch-size 8
    port, grpc_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NLPSERVE_")},
        **image_env("cpu"),
        "NLPSERVE_MODEL_REPOSITORY": str(model_repository),  # the volume at /models
        "NLPSERVE_PORT": str(port),
        # as the image's ENV PATH=/opt/venv/bin:$PATH
        "PATH": f"{serve_venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "NLPSERVE_INTRA_OP_THREADS": "1",  # the test shares 2 cores
        "NLPSERVE_GRPC_PORT": str(grpc_port),  # the image's 8001 could be taken here
    }
    env.pop("VIRTUAL_ENV", None)
    server = subprocess.Popen(command, env=env, cwd=tmp_path)  # WORKDIR outside the source
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=60)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/classify",
            data=json.dumps({"texts": ["a warm and funny film"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        assert body["model"] == "sentiment"
        assert body["results"][0]["label"] in ("negative", "positive")
        # The serve extras carry the gRPC server too (grpcio and the protocol's generated code).
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=40) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_model_in_the_image_serves_a_cached_export_and_explains_a_missing_one(
    serve_venv: Path, tmp_path: Path
) -> None:
    """`nlpserve serve --model DIR` in the torch-free image: a cache filled elsewhere (here by
    this process, which has PyTorch) serves; an empty cache says which extras the export needs."""
    from export.tiny import tiny_classifier_checkpoint
    from nlpserve_cli.serve_model import build_parser, ensure_exported

    checkpoint = tiny_classifier_checkpoint(tmp_path / "sentiment")
    nlpserve = str(serve_venv / "bin" / "nlpserve")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NLPSERVE_", "VIRTUAL_ENV"))}
    env["NLPSERVE_INTRA_OP_THREADS"] = "1"
    env["NLPSERVE_GRPC_PORT"] = "0"  # the default 8001 could be taken on a shared machine

    empty = subprocess.run(
        [nlpserve, "serve", "--model", str(checkpoint), "--cache-dir", str(tmp_path / "empty")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert empty.returncode == 2
    assert "needs the train and export extras" in empty.stderr
    train = subprocess.run(
        [nlpserve, "train", "classifier"], env=env, capture_output=True, text=True
    )
    assert train.returncode == 2 and "pip install 'nlpserve[train]'" in train.stderr

    cache = tmp_path / "cache"
    argv = ["--model", str(checkpoint), "--cache-dir", str(cache), "--no-optimize"]
    ensure_exported(build_parser().parse_args(argv))
    port = free_port()
    server = subprocess.Popen(
        [nlpserve, "serve", *argv, "--port", str(port)], env=env, cwd=tmp_path
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=60)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=40) == 0
