"""The model code both serving-framework peers run (BentoML, Ray Serve): nlpserve's own engine.

A peer runs the same ONNX file, tokenizer.json and ONNX Runtime session settings as nlpserve, so
the serving benchmark measures the serving framework and nothing else. It reuses
service.engines.ClassifierEngine (onnxruntime, tokenizers, numpy and pydantic only: every peer
venv has them) instead of a copy; the peer venvs find this repository through PYTHONPATH.

Unlike nlpserve, a peer pads the whole batch its framework formed to its longest text, in arrival
order: what a user of the framework writes, and all its batching API offers (one call per batch).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.engines.classifier import ClassifierEngine
from service.engines.session import SessionSettings
from service.repository import read_model

# The peers are configured by environment, which both frameworks pass to their worker processes.
ENV_REPOSITORY = "PEER_REPOSITORY"
ENV_MODEL = "PEER_MODEL"
ENV_VERSION = "PEER_VERSION"
ENV_THREADS = "PEER_INTRA_OP_THREADS"
ENV_MAX_BATCH_SIZE = "PEER_MAX_BATCH_SIZE"


@dataclass(frozen=True)
class PeerConfig:
    repository: Path
    model: str
    version: int
    threads: int
    max_batch_size: int

    @classmethod
    def from_env(cls) -> PeerConfig:
        return cls(
            Path(os.environ[ENV_REPOSITORY]),
            os.environ[ENV_MODEL],
            int(os.environ[ENV_VERSION]),
            int(os.environ[ENV_THREADS]),
            int(os.environ[ENV_MAX_BATCH_SIZE]),
        )

    def to_env(self) -> dict[str, str]:
        return {
            ENV_REPOSITORY: str(self.repository),
            ENV_MODEL: self.model,
            ENV_VERSION: str(self.version),
            ENV_THREADS: str(self.threads),
            ENV_MAX_BATCH_SIZE: str(self.max_batch_size),
        }

    @classmethod
    def from_command_line(
        cls, prog: str, default_port: int, argv: list[str] | None = None
    ) -> tuple[PeerConfig, str, int]:
        """(config, host, port) from a peer's options (loadtests.peers.peer_command writes them;
        bench_serving's running_server adds --host and --port)."""
        parser = argparse.ArgumentParser(prog=prog)
        parser.add_argument("--repository", type=Path, required=True)
        parser.add_argument("--model", default="sentiment")
        parser.add_argument("--version", type=int, required=True)
        parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument("--max-batch-size", type=int, default=32)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=default_port)
        args = parser.parse_args(argv)
        config = cls(
            args.repository.resolve(), args.model, args.version, args.threads, args.max_batch_size
        )
        return config, args.host, args.port


class PeerClassifier:
    """One model version on one CPU session, classifying a batch in one engine run."""

    def __init__(self, config: PeerConfig) -> None:
        version = read_model(config.repository / config.model, config.version)
        settings = SessionSettings(providers="cpu", intra_op_threads=config.threads)
        self.engine = ClassifierEngine(version, settings)
        self.engine.warmup(config.max_batch_size)
        self.model = config.model
        self.version = str(version.version)

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """One result per text: label, score, scores (nlpserve's ClassResult), plus truncated."""
        encoded = self.engine.encoder.encode(texts)
        results = []
        for e, probabilities in zip(encoded, self.engine.run(encoded), strict=True):
            best = int(probabilities.argmax())
            scores = dict(zip(self.engine.labels, probabilities.tolist(), strict=True))
            results.append(
                {
                    "label": self.engine.labels[best],
                    "score": float(probabilities[best]),
                    "scores": scores,
                    "truncated": e.truncated,
                }
            )
        return results


def response_body(model: str, version: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """nlpserve's /v1/classify response body from one request's `PeerClassifier.classify`
    results."""
    return {
        "model": model,
        "version": version,
        "results": [{k: r[k] for k in ("label", "score", "scores")} for r in results],
        "truncated": [i for i, r in enumerate(results) if r["truncated"]],
    }
