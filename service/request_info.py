"""What one request learns about itself on its way through the service, for its log line."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass

# Ids this process makes: a random per-process prefix and a counter, unique across replicas as
# uuid4 is, without its urandom call per request (py-spy: 2% of the event loop's time per request).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count()


def new_request_id() -> str:
    """An id for a request that brought none: 32 hex digits, like uuid4().hex."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


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
