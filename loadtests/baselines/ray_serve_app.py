"""Peer (e): the sentiment model behind Ray Serve 2.60 with `@serve.batch`.

Runs in its own venv (`make peers`: /work/venvs/ray), started by loadtests.bench_serving:

    PYTHONPATH=. /work/venvs/ray/bin/python -m loadtests.baselines.ray_serve_app \\
        --repository runs/demo/model_repository --model sentiment --version 1 --threads 2 \\
        --host 127.0.0.1 --port 8002

This process starts a local Ray instance (GCS, raylet: its children, so the benchmark's CPU count
includes them), deploys one replica behind Ray Serve's HTTP proxy with a FastAPI ingress (same
route, request and response JSON as nlpserve), and stops Ray on SIGTERM. Tuned as Ray Serve's
docs advise:
- one replica: ONNX Runtime's intra-op threads use the cores (replicas x threads <= cores, as
  for nlpserve's workers);
- `@serve.batch(max_batch_size=32)` as nlpserve's config, `batch_wait_timeout_s=0`: as nlpserve
  on a CPU, a batch takes what is queued when the replica is free (requests arriving during a run
  ride the next batch), so one user pays no batch window;
- `max_ongoing_requests` = 2 x max_batch_size (Ray's default of 5 would cap every batch at 5;
  the docs ask for more than max_batch_size);
- the batch runs in a thread (`asyncio.to_thread`), so the replica's event loop keeps accepting
  requests for the next batch while ONNX Runtime runs;
- `RAY_worker_niceness=0`: Ray starts its workers (the replica and the proxy) at niceness 15 by
  default, which on a machine shared with the load generator starves the server;
- no dashboard, no access log line per request (nlpserve runs without one too).
Readiness: /v2/health/ready on the ingress, answering once the replica has loaded the model.
"""

# No `from __future__ import annotations`: Ray pickles the deployment class by value, and FastAPI
# must find the request model in its annotations as an object, not as a name to look up.
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from pydantic import BaseModel

from loadtests.baselines.onnx_peer import PeerClassifier, PeerConfig, response_body

READY_PATH = "/v2/health/ready"


class ClassifyRequest(BaseModel):
    """nlpserve's /v1/classify request (module level: FastAPI resolves the annotation here)."""

    texts: list[str]
    model: str | None = None


def build_app(config: PeerConfig) -> Any:
    """The Ray Serve application (imports Ray: only in its venv)."""
    from fastapi import FastAPI, HTTPException
    from ray import serve

    ingress = FastAPI()

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=2 * config.max_batch_size,
        ray_actor_options={"num_cpus": 0},  # ORT's threads, not Ray's CPU slots, use the cores
    )
    @serve.ingress(ingress)
    class Classifier:
        def __init__(self) -> None:
            self.model = PeerClassifier(config)

        @serve.batch(max_batch_size=config.max_batch_size, batch_wait_timeout_s=0.0)
        async def classify_batch(self, requests: list[list[str]]) -> list[list[dict[str, Any]]]:
            texts = [text for request in requests for text in request]
            results = await asyncio.to_thread(self.model.classify, texts)
            out, start = [], 0
            for request in requests:
                out.append(results[start : start + len(request)])
                start += len(request)
            return out

        @ingress.post("/v1/classify")
        async def classify(self, request: ClassifyRequest) -> dict[str, Any]:
            if request.model not in (None, config.model):
                raise HTTPException(404, f"model {request.model!r} not found")
            results = await self.classify_batch(request.texts)
            return response_body(self.model.model, self.model.version, results)

        @ingress.get(READY_PATH)
        async def ready(self) -> dict[str, bool]:
            return {"ready": True}

    deployment: Any = Classifier  # a ray.serve Deployment (mypy runs without ray installed)
    return deployment.bind()


def serve_forever(config: PeerConfig, host: str, port: int) -> None:
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray reads this exact name)
    import ray
    from ray import serve

    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        build_app(config),
        name="nlpserve-peer",
        route_prefix="/",
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )

    def stop(signum: int, frame: object) -> None:
        serve.shutdown()
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    prog = "python -m loadtests.baselines.ray_serve_app"
    config, host, port = PeerConfig.from_command_line(prog, 8002, argv)
    serve_forever(config, host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
