"""What the server (service/decode_process.py) and a translator's lane process
(service/decode_worker.py) say to each other over their socket, pickled by
`multiprocessing.connection.Connection`: the server sends a `LaneSpec` first, then `Submit`,
`Cancel` and `Stop`; the process answers `Ready` once its model is loaded, then one `Report` per
decoding step (and per message that produced an answer), and closes the socket when it ends.

Sequences are named by the server's ids (`Submit.ids`); the process keeps its own. Errors travel
as their kind, message and Retry-After, and are raised again as `ServiceError` by the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.decode_items import StepStats
from service.decode_policy import DecodePolicy
from service.engines.session import SessionSettings
from service.engines.translator import DecodingParams
from service.errors import ErrorKind, ServiceError
from service.repository import ModelVersion


@dataclass(frozen=True)
class LaneSpec:
    """What a lane process builds: the model version's translator on one-thread sessions, one
    lane's scheduler with `policy`, and the server's logging."""

    version: ModelVersion
    session: SessionSettings
    policy: DecodePolicy
    index: int
    log_level: str
    log_format: str
    warmup: bool
    core: int | None = None  # the CPU the process pins itself to (None: not pinned)


@dataclass(frozen=True)
class Submit:
    """One request's sequences (all or none), as `DecodeScheduler.submit` takes them."""

    ids: tuple[int, ...]  # the server's id of each sequence
    sources: tuple[list[int], ...]  # each sequence's source token ids
    params: DecodingParams
    timeout_s: float
    streamed: bool  # greedy, one new token at a time in `Report.tokens`


@dataclass(frozen=True)
class Cancel:
    """The client of these sequences went away: they leave at the next step."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Stop:
    """Take no more work; finish what is queued and running within `timeout_s` (None: no limit),
    then fail what is left and exit."""

    timeout_s: float | None


@dataclass(frozen=True)
class Ready:
    """The model is loaded (and warmed up): the lane takes work."""


@dataclass(frozen=True)
class Failure:
    """A `ServiceError` on its way back to the server."""

    kind: str  # ErrorKind's value
    message: str
    retry_after: int | None = None

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        if isinstance(error, ServiceError):
            return cls(error.kind.value, error.message, error.retry_after)
        return cls(ErrorKind.INTERNAL.value, "decoding failed (details in the server log)")

    def error(self) -> ServiceError:
        return ServiceError(ErrorKind(self.kind), self.message, retry_after=self.retry_after)


@dataclass
class Report:
    """What happened since the last report: at most one step's statistics, and the sequences
    that joined a step, got a new token (streamed), were answered or failed."""

    joined: list[tuple[int, int, float]] = field(default_factory=list)  # id, batch rows, when
    tokens: list[tuple[int, int]] = field(default_factory=list)  # id, token
    answers: list[tuple[int, str]] = field(default_factory=list)  # id, translation
    failures: list[tuple[int, Failure]] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)  # reason, sequences
    step: StepStats | None = None

    def __bool__(self) -> bool:
        return bool(
            self.joined
            or self.tokens
            or self.answers
            or self.failures
            or self.dropped
            or self.step is not None
        )
