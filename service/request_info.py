"""What one request learns about itself on its way through the service, for its log line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestInfo:
    request_id: str
    started: float  # event loop time when the request arrived; the deadline counts from here
    model: str | None = None
    batch_size: int | None = None  # the largest engine run this request's sequences went into
