"""Tracing through the real OTLP/HTTP exporter to loadtests/otlp_sink.py (the stand-in collector
of the tracing-overhead benchmark in reports/tracing-overhead.md): spans leave the server over
HTTP, also those still batched when it stops."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import PROJECT_ROOT, ServerProcess, free_port


def test_spans_reach_an_otlp_http_collector(
    copy_repository: Callable[..., Path], launch_server: Callable[..., ServerProcess]
) -> None:
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "loadtests.otlp_sink", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(f"http://127.0.0.1:{port}/probe"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server = launch_server(
            copy_repository("sentiment"), otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces"
        )
        reply = httpx.post(server.url + "/v1/classify", json={"texts": ["traced"]}, timeout=30)
        assert reply.status_code == 200
        assert server.stop() == 0  # the batch processor flushes at exit
    finally:
        sink.terminate()
        output, _ = sink.communicate(timeout=10)
    received = re.search(r"received (\d+) bytes", output)
    assert received and int(received.group(1)) > 100, output


def _answers(url: str) -> bool:
    try:
        return httpx.post(url, content=b"").status_code == 200
    except httpx.ConnectError:
        return False
