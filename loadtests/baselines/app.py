"""The serving code users write today: FastAPI + PyTorch, one forward pass per request.

The point of comparison for `make bench-serving` (loadtests/bench_serving.py): the fine-tuned
checkpoint loaded with model_src.classifier.checkpoint.load_classifier, a sync endpoint that
FastAPI runs in its thread pool, and PyTorch called once per request: no batching across
requests, no ONNX Runtime, default torch threading. Same /v1/classify request and response
shape as nlpserve, so the same Locust users drive both.

    python -m loadtests.baselines.app --checkpoint checkpoints/sentiment --port 8001
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from model_src.bert.tokenization import pad_encodings
from model_src.classifier.checkpoint import load_classifier

logger = logging.getLogger(__name__)


class ClassifyRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=64)
    model: str | None = None


class ClassifyResult(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    version: str
    results: list[ClassifyResult]
    truncated: list[int]  # indices of texts cut at max_length, as nlpserve reports them


@dataclass
class Loaded:
    model: torch.nn.Module
    labels: list[str]
    tokenizer: Tokenizer


def create_app(checkpoint: Path, model_name: str = "sentiment", device: str = "cpu") -> FastAPI:
    """The app, loading the checkpoint at startup (as users do, in the lifespan)."""
    loaded: list[Loaded] = []  # filled by the lifespan

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model, config, tokenizer = load_classifier(checkpoint)
        loaded.append(Loaded(model.to(device), config["labels"], tokenizer))
        logger.info("loaded %s (%d torch threads)", checkpoint, torch.get_num_threads())
        yield
        loaded.clear()

    app = FastAPI(title="baseline: FastAPI + PyTorch", lifespan=lifespan)

    @app.post("/v1/classify")
    def classify(request: ClassifyRequest) -> ClassifyResponse:
        if request.model not in (None, model_name):
            raise HTTPException(404, f"model {request.model!r} not found")
        state = loaded[0]
        encodings = state.tokenizer.encode_batch(request.texts)
        batch = pad_encodings([e.ids for e in encodings], [e.type_ids for e in encodings])
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        with torch.inference_mode():
            probabilities = state.model(**batch).logits.softmax(dim=-1)
        labels = state.labels
        results = []
        for row in probabilities.tolist():
            best = max(range(len(labels)), key=row.__getitem__)
            scores = dict(zip(labels, row, strict=True))
            results.append(ClassifyResult(label=labels[best], score=row[best], scores=scores))
        truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        return ClassifyResponse(
            model=model_name, version="pytorch", results=results, truncated=truncated
        )

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    def health() -> dict[str, bool]:
        return {"ready": bool(loaded)}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.baselines.app", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned classifier dir")
    parser.add_argument("--model-name", default="sentiment")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument(
        "--log-level", default="info", help="warning: no per-request access log (benchmarks)"
    )
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        print(f"error: {args.checkpoint} holds no config.json: not a checkpoint", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(args.checkpoint, args.model_name, args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
