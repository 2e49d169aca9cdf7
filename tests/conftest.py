"""Shared fixtures: a model repository of tiny but real exported models, and ways to serve it.

`model_repository` exports three tiny random models (sentiment, nli, translator) with the export
pipeline itself (`export.tiny` checkpoints -> `export.classifier` / `export.translator`), once per
session. Tests must not change it: copy it (`copy_repository`) before breaking anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Test servers share 2 cores with everything else: one ORT thread, no spinning.
# gRPC off unless a test asks for it: a fixed port (8001 by default) would collide between tests.
QUIET_SERVICE_SETTINGS: dict[str, Any] = {
    "intra_op_threads": 1,
    "allow_spinning": False,
    "grpc_port": 0,
}


@pytest.fixture(autouse=True)
def _default_training_precision() -> Iterator[None]:
    """A trainer run in-process sets the process's matmul precision (training.use_precision);
    each test starts from the default (fp32 on CPU), also after a wider-scoped fixture trained."""

    def reset() -> None:
        training = sys.modules.get("model_src.common.training")
        if training is not None:
            training.reset_precision()

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny BERT (hidden 32, 2 layers) in the Hugging Face layout with the
    real MiniLM vocabulary and tokenizer: a valid --init that fine-tunes in seconds on 2 cores."""
    import torch  # here, not at the top: the service tests need no torch

    from model_src.bert.hf_checkpoint import default_checkpoint_dir, save_hf_bert
    from model_src.bert.model import BertConfig, BertModel
    from model_src.bert.tokenization import load_tokenizer

    tiny = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_init")
    save_hf_bert(BertModel(tiny), tiny, out, load_tokenizer(default_checkpoint_dir()))
    return out


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own sample data (sentiment, nli, translation), as `make demo` writes it."""
    from model_src.sample_data import write_sample_data

    out = tmp_path_factory.mktemp("sample")
    write_sample_data(out, seed=0)
    return out


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sentiment (text-classification), nli (text-pair-classification) and translator
    (translation, greedy/beam up to 16 new tokens), version 1 each, exported from tiny random
    checkpoints. Read-only for tests."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("models")
    checkpoints, repository = root / "checkpoints", root / "repository"
    with warnings.catch_warnings():
        # torch's deprecated TorchScript exporter warns in ways that change between torch
        # releases; the export's own tests watch those, here it only builds test fixtures.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export_models(checkpoints, repository)
    return repository


def _export_models(checkpoints: Path, repository: Path) -> None:
    from export.classifier import export_classifier
    from export.tiny import tiny_classifier_checkpoint, tiny_translator_checkpoint
    from export.translator import export_translator

    export_classifier(
        tiny_classifier_checkpoint(checkpoints / "sentiment"),
        repository,
        kind="classifier",
        threads=1,
    )
    export_classifier(
        tiny_classifier_checkpoint(checkpoints / "nli", task="text-pair-classification"),
        repository,
        kind="nli",
        threads=1,
    )
    export_translator(
        tiny_translator_checkpoint(checkpoints / "translator"),
        repository,
        threads=1,
        beam_size=2,
        max_new_tokens=16,  # a random model never stops early: keep decoding short
    )


@pytest.fixture(scope="session")
def masked_translator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny translator of `model_repository` (same checkpoint seed) exported with the masked
    self-attention decoder (service/engines/generation.py): its version directory."""
    from export.tiny import tiny_translator_checkpoint
    from export.translator import export_translator

    root = tmp_path_factory.mktemp("masked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return export_translator(
            tiny_translator_checkpoint(root / "checkpoint"),
            root / "repository",
            threads=1,
            max_new_tokens=16,
            self_attention="masked",
        )


@pytest.fixture
def copy_repository(model_repository: Path, tmp_path: Path) -> Callable[..., Path]:
    """`copy_repository(*names)`: a private copy of the repository (only `names` if given)."""

    def copy(*names: str) -> Path:
        target = tmp_path / f"repository-{len(list(tmp_path.glob('repository-*')))}"
        target.mkdir()
        for model_dir in model_repository.iterdir():
            if not names or model_dir.name in names:
                shutil.copytree(model_dir, target / model_dir.name)
        return target

    return copy


def clone_model(repository: Path, source: str, name: str) -> Path:
    """Copy model `source` to a new model `name` in the same repository; its model directory."""
    target = repository / name
    shutil.copytree(repository / source, target)
    config = json.loads((target / "config.json").read_text())
    config["name"] = name
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="session")
def service_settings(model_repository: Path) -> Callable[..., Any]:
    """`service_settings(**overrides)`: Settings for the shared repository, quiet on CPU."""
    from service.settings import Settings

    def make(**overrides: Any) -> Settings:
        values = {"model_repository": model_repository, **QUIET_SERVICE_SETTINGS, **overrides}
        return Settings(**values)

    return make


def wait_until_ready(client: Any, timeout_s: float = 20.0) -> None:
    """Poll /v2/health/ready (models load in the background) until 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the service did not become ready")


@pytest.fixture(scope="session")
def app_client(service_settings: Callable[..., Any]) -> Callable[..., Any]:
    """`with app_client(**settings) as client:` a TestClient on a ready app (lifespan run)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    @contextlib.contextmanager
    def open_client(wait: bool = True, **overrides: Any) -> Iterator[TestClient]:
        app = create_app(service_settings(**overrides))
        with TestClient(app, raise_server_exceptions=False) as client:
            if wait:
                wait_until_ready(client)
            yield client

    return open_client


# ------------------------------------------------------------------------- real servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """`python -m service` in a subprocess on a free loopback port, logging JSON to a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:  # tritonclient wants host:port without a scheme
        return f"127.0.0.1:{self.port}"

    def wait_live(self, timeout_s: float = 30.0) -> None:
        self._wait("/v2/health/live", timeout_s)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        self._wait("/v2/health/ready", timeout_s)

    def _wait(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{path} not 200 after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def wait_for_log_record(self, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The one access-log record of `request_id`. The server writes it after the response
        has gone out, so on a busy machine it can land a moment after the client has read it."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.log_records() if r.get("request_id") == request_id]
            if found or time.monotonic() > deadline:
                assert len(found) == 1, f"{len(found)} log records for request {request_id!r}"
                return found[0]
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def launch_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """`launch_server(repository, wait="ready"|"live"|None, **settings)`: a real uvicorn serving
    `repository`; settings become NLPSERVE_* variables. Every server is stopped at session end."""
    started: list[ServerProcess] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def launch(repository: Path, wait: str | None = "ready", **settings: Any) -> ServerProcess:
        port = free_port()
        values = {**QUIET_SERVICE_SETTINGS, "log_format": "json", **settings}
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "NLPSERVE_MODEL_REPOSITORY": str(repository),
            "NLPSERVE_HOST": "127.0.0.1",
            "NLPSERVE_PORT": str(port),
            **{
                f"NLPSERVE_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in values.items()
            },
        }
        log_path = log_dir / f"server-{port}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        server = ServerProcess(process, port, log_path, log_file)
        started.append(server)
        if wait == "ready":
            server.wait_ready()
        elif wait == "live":
            server.wait_live()
        return server

    yield launch
    for server in started:
        server.stop(signal.SIGKILL if server.process.poll() is None else signal.SIGTERM)
