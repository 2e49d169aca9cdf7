"""Logs: JSON for machines, readable text at a terminal, polled routes at debug, uvicorn's own
lines in the same format as the service's."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.logs import JsonFormatter, TextFormatter, resolve_format


def record(**extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("nlpserve.access", logging.INFO, __file__, 1, "POST %s", ("/x",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_text_at_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"


def test_json_lines_carry_the_extra_fields() -> None:
    entry = json.loads(JsonFormatter().format(record(model="sentiment", batch_size=None)))
    assert entry["message"] == "POST /x" and entry["level"] == "info"
    assert entry["model"] == "sentiment" and entry["batch_size"] is None
    assert entry["time"].endswith("Z")


def test_text_lines_are_readable() -> None:
    """Time, level, logger, message, then only the fields that hold a value."""
    line = TextFormatter().format(record(model="sentiment", batch_size=None, latency_ms=3.2))
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} INFO  nlpserve\.access  POST /x  model=sentiment latency_ms=3\.2",
        line,
    ), line


def test_probes_and_scrapes_log_at_debug(
    app_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Health probes, /metrics and /v1/stats leave no info line; inference requests do."""
    with app_client() as client, caplog.at_level(logging.DEBUG, logger="nlpserve.access"):
        for path in ("/v2/health/ready", "/v2/health/live", "/metrics", "/v1/stats"):
            assert client.get(path).status_code == 200
        assert client.post("/v1/classify", json={"texts": ["fine"]}).status_code == 200
    levels = {r.__dict__["route"]: r.levelno for r in caplog.records if r.name == "nlpserve.access"}
    assert levels == {
        "/v2/health/ready": logging.DEBUG,
        "/v2/health/live": logging.DEBUG,
        "/metrics": logging.DEBUG,
        "/v1/stats": logging.DEBUG,
        "/v1/classify": logging.INFO,
    }


def test_uvicorn_and_the_service_log_alike(launch_server: Any, model_repository: Path) -> None:
    """With --log-format text, uvicorn's own start-up lines use the service's text format, and a
    request's access line follows it; successful readiness polls wrote nothing."""
    server = launch_server(model_repository, log_format="text")
    httpx.post(server.url + "/v1/classify", json={"texts": ["fine"]}).raise_for_status()
    deadline = time.monotonic() + 10
    while "POST /v1/classify 200" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)  # the access line is written after the response went out
    log = server.log()
    line = r"\d\d:\d\d:\d\d\.\d{3} (INFO |WARN)"
    assert re.search(rf"^{line} uvicorn\.error  Application startup complete\.$", log, re.M), log
    assert re.search(rf"^{line} nlpserve\.access  POST /v1/classify 200  request_id=", log, re.M)
    assert "GET /v2/health/ready 200" not in log  # (503s while loading are worth a line)
    assert not any(line.startswith("{") for line in log.splitlines())
