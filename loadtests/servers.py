"""Start a server under test on 127.0.0.1, wait until it is ready, stop it afterwards."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    host: str,
    timeout_s: float,
    path: str = "/v2/health/ready",
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll host+path until it answers 200, or raise TimeoutError (RuntimeError at once when
    the server process given has exited)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before ready")
        try:
            with urllib.request.urlopen(host.rstrip("/") + path, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:  # refused while the server starts
            last = repr(e)
        time.sleep(0.25)
    raise TimeoutError(f"{host}{path} not ready after {timeout_s:g} s ({last})")


def nlpserve_command(repository: Path) -> list[str]:
    """`python -m service` on a model repository, with this interpreter."""
    command = [sys.executable, "-m", "service", "--model-repository", str(repository)]
    # gRPC off: the benchmarks speak HTTP, and a fixed gRPC port would collide between runs.
    return [*command, "--grpc-port", "0"]


@contextmanager
def running_server(
    command: list[str],
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
    ready_path: str = "/v2/health/ready",
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `command --host 127.0.0.1 --port P`; yield (base URL, process) once
    `ready_path` answers 200; SIGTERM it on exit (nlpserve drains first).

    The environment is this process's minus NLPSERVE_* (so a developer's settings do not leak
    into a measurement), plus env. Output goes to log_path when given.
    """
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    full_command = [*command, "--host", "127.0.0.1", "--port", str(port)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NLPSERVE_")}
    full_env.update(env or {})
    logger.info("starting: %s", " ".join(full_command))
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(full_command, env=full_env, stdout=log, stderr=log)
    else:
        process = subprocess.Popen(full_command, env=full_env)
    try:
        wait_ready(host, ready_timeout_s, ready_path, process=process)
        yield host, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
