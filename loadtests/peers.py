"""The serving frameworks users pick instead of nlpserve, as servers for the serving benchmark.

Each peer (loadtests/baselines/bentoml_service.py, ray_serve_app.py) runs nlpserve's own
classifier engine (same ONNX file, tokenizer.json and ONNX Runtime settings) behind its framework's
batching, in its own venv (`make peers`), with the same /v1/classify route and JSON. This module
builds their command lines, and checks that every server under test answers with the same labels
(a benchmark of servers that disagree would compare different work).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Peer:
    name: str  # also its venv's folder name under --peer-venvs
    label: str  # in tables and the plot
    module: str  # python -m MODULE --repository ... --host H --port P
    ready_path: str  # answers 200 once the model is loaded


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "bentoml",
            "(d) BentoML 1.4 adaptive batching",
            "loadtests.baselines.bentoml_service",
            "/readyz",
        ),
        Peer(
            "ray",
            "(e) Ray Serve @serve.batch",
            "loadtests.baselines.ray_serve_app",
            "/v2/health/ready",
        ),
    )
}


def peer_python(venvs: Path, peer: str) -> Path:
    """The peer venv's interpreter; FileNotFoundError (naming `make peers`) when not installed."""
    python = venvs / peer / "bin" / "python"
    if not (venvs / peer / ".installed").is_file() or not python.is_file():
        raise FileNotFoundError(
            f"no {peer} venv at {venvs / peer} (make peers PEER_VENVS={venvs} installs it)"
        )
    return python


def peer_command(
    peer: str, venvs: Path, repository: Path, model: str, version: int, threads: int,
    max_batch_size: int,
) -> list[str]:  # fmt: skip
    """The command line that serves `model` version `version` of `repository` with `peer`
    (bench_serving's running_server adds --host and --port)."""
    return [
        str(peer_python(venvs, peer)),
        *("-m", PEERS[peer].module),
        *("--repository", str(repository.resolve()), "--model", model),
        *("--version", str(version), "--threads", str(threads)),
        *("--max-batch-size", str(max_batch_size)),
    ]


def peer_env() -> dict[str, str]:
    """The peers import this repository's service/ and loadtests/ packages (their venvs hold
    only the framework, onnxruntime, tokenizers and numpy)."""
    return {"PYTHONPATH": str(PROJECT_ROOT)}


def probe_labels(host: str, model: str, texts: list[str], chunk: int = 16) -> list[str]:
    """The label a running server gives each text (POST /v1/classify, `chunk` texts a request)."""
    labels: list[str] = []
    for start in range(0, len(texts), chunk):
        body = json.dumps({"texts": texts[start : start + chunk], "model": model}).encode()
        request = urllib.request.Request(
            host.rstrip("/") + "/v1/classify",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            labels += [r["label"] for r in json.loads(response.read())["results"]]
    return labels


def label_agreement(reference: list[str], other: list[str]) -> float:
    """Share of texts on which `other` gives `reference`'s label (ValueError on unequal length)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"cannot compare {len(reference)} labels with {len(other)}")
    return sum(a == b for a, b in zip(reference, other, strict=True)) / len(reference)
