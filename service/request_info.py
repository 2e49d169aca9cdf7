"""What one request learns about itself on its way through the service, for its log line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestInfo:
    request_id: str
    started: float  # event loop time when the request arrived; the deadline counts from here
    model: str | None = None
    # The largest engine run this request's sequences went into (a translator decoded step by
    # step: the rows of the decode step its sequences joined); None: none, or not known yet.
    batch_size: int | None = None
    # The answer streams while it decodes (service/streaming.py): its headers leave before its
    # sequence joins a decode step, so they carry no batch size; the log line has it.
    streamed: bool = False
