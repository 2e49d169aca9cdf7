"""Logging set-up: one JSON object per line for log collectors, or readable text at a terminal;
fields passed with `extra=` become JSON keys or ` key=value` suffixes. uvicorn's own loggers go
through the same handler, so its lines look like the service's.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_LEVEL_COLORS = {"WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        # color_message: uvicorn's copy of the message with ANSI colours
        if key not in _STANDARD and not key.startswith("_") and key != "color_message"
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`10:02:03.456 INFO  nlpserve.access  POST /v1/classify 200  model=sentiment ...`: local
    time, fields that have a value, warnings and errors coloured when writing to a terminal."""

    def __init__(self, color: bool = False) -> None:
        super().__init__()
        self._color = color

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = f"{record.levelname:<5}"
        if self._color and record.levelname in _LEVEL_COLORS:
            level = f"{_LEVEL_COLORS[record.levelname]}{level}\x1b[0m"
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items() if v is not None)
        text = f"{clock}.{int(record.msecs):03d} {level} {record.name}  {record.getMessage()}"
        if fields:
            text += f"  {fields}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def resolve_format(fmt: str, stream: TextIO) -> str:
    """With "auto": text for a person at a terminal, JSON for everything else (pipes, pods)."""
    if fmt != "auto":
        return fmt
    return "text" if stream.isatty() else "json"


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route the root logger (and uvicorn's) to stderr in the chosen format."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if resolve_format(fmt, stream) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(color=stream.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
