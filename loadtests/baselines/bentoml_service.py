"""Peer (d): the sentiment model behind BentoML 1.4 with adaptive batching (`batchable=True`).

Runs in its own venv (`make peers`: /work/venvs/bentoml), started by loadtests.bench_serving:

    PYTHONPATH=. /work/venvs/bentoml/bin/python -m loadtests.baselines.bentoml_service \\
        --repository runs/demo/model_repository --model sentiment --version 1 --threads 2 \\
        --host 127.0.0.1 --port 3000

which execs `bentoml serve loadtests.baselines.bentoml_service:Classifier` with the model given
through PEER_* variables (loadtests.baselines.onnx_peer). Tuned as BentoML's docs advise for a
CPU model: one worker process (ONNX Runtime's intra-op threads use the cores; `workers` x
threads <= cores, as for nlpserve), adaptive batching up to nlpserve's max_batch_size (32), and
`max_latency_ms` high enough (10 s) that the dispatcher never sheds load the benchmark offers
(it answers 503 past it) while its cork regression still releases a batch as soon as waiting
would not pay off.

Same route and JSON as nlpserve: BentoML batches one argument along its first dimension and
answers each request with its slice as a JSON list, so a small ASGI middleware (registered with
BentoML's add_asgi_middleware) wraps that list into nlpserve's {"model", "version", "results",
"truncated"} body; the request's "model" field is accepted and checked by the middleware too.
Readiness: BentoML's own /readyz.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from loadtests.baselines.onnx_peer import ENV_REPOSITORY, PeerClassifier, PeerConfig, response_body

ROUTE = "/v1/classify"
READY_PATH = "/readyz"
MAX_LATENCY_MS = 10_000


def _define_service() -> Any:
    """The BentoML service class; only when BentoML serves this module (its venv has bentoml)."""
    import bentoml

    config = PeerConfig.from_env()

    # No access log line per request: nlpserve and the other servers run without one too.
    @bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
    class Classifier:
        def __init__(self) -> None:
            self.model = PeerClassifier(config)

        @bentoml.api(
            route=ROUTE,
            batchable=True,
            max_batch_size=config.max_batch_size,
            max_latency_ms=MAX_LATENCY_MS,
        )
        def classify(self, texts: list[str]) -> list[dict[str, Any]]:
            return self.model.classify(texts)

    service: Any = Classifier  # a bentoml.Service (mypy runs without bentoml installed)
    service.add_asgi_middleware(NlpserveShape, model=config.model, version=str(config.version))
    return service


class NlpserveShape:
    """ASGI middleware: nlpserve's request and response bodies on ROUTE around BentoML's
    batchable API (which takes {"texts": [...]} and answers a JSON list)."""

    def __init__(self, app: Any, model: str, version: str) -> None:
        self.app, self.model, self.version = app, model, version

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != ROUTE:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request = json.loads(body)
            texts, model = request["texts"], request.get("model")
        except (ValueError, KeyError, TypeError):
            await _send_json(send, 422, {"detail": "expected {'texts': [...], 'model': ...}"})
            return
        if model not in (None, self.model):
            await _send_json(send, 404, {"detail": f"model {model!r} not found"})
            return
        inner_body = json.dumps({"texts": texts}).encode()
        sent = False

        async def inner_receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": inner_body, "more_body": False}
            return await receive()

        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, inner_receive, capture)
        answer = b"".join(chunks)
        if start.get("status") != 200:  # BentoML's own error answer, passed on as it is
            await send(start)
            await send({"type": "http.response.body", "body": answer})
            return
        await _send_json(send, 200, response_body(self.model, self.version, json.loads(answer)))


async def _send_json(send: Any, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def main(argv: list[str] | None = None) -> int:
    prog = "python -m loadtests.baselines.bentoml_service"
    config, host, port = PeerConfig.from_command_line(prog, 3000, argv)
    os.environ.update(config.to_env())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage reports from a benchmark
    project_root = Path(__file__).resolve().parents[2]
    service = "loadtests.baselines.bentoml_service:Classifier"
    command = [sys.executable, "-m", "bentoml", "serve", service, "--host", host]
    command += ["--port", str(port), "--working-dir", str(project_root)]
    # exec: the benchmark's process is BentoML's arbiter, so its CPU (children included) counts.
    os.execv(sys.executable, command)
    return 0  # not reached


# Defined at import only under `bentoml serve` (which has imported bentoml, and set PEER_*).
if ENV_REPOSITORY in os.environ and "bentoml" in sys.modules:
    Classifier = _define_service()


if __name__ == "__main__":
    sys.exit(main())
