"""A lane of a step-scheduled translator in a process of its own (`decode_lane_processes`), behind
`DecodeScheduler`'s interface: what service/decode_lanes.py spreads requests over.

The process (service/decode_worker.py: why a process) holds the model's sessions and a scheduler;
here stays what the event loop must answer at once: the request's checks and the 429 decision
(from the step times and freed rows the process reports), the futures its clients await, and
the counts of rows waiting and running that spread requests over the lanes. One socket carries
the messages both ways (service/decode_wire.py); the event loop reads it when it is readable, so
no thread of this process takes the GIL for it.

If the process dies, every sequence it held is answered (500, `internal`) and a new process is
started; until it is ready the lane takes no work (`available`), and the other lanes take it.
A process that fails before it was ever ready is not restarted: the model fails to load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from service.decode_items import DecodeItem, DecodeObserver, checked_steps, new_items
from service.decode_policy import DecodeAdmission, refuse_if_full
from service.decode_wire import Cancel, LaneSpec, Ready, Report, Stop, Submit
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams
from service.errors import ErrorKind, ServiceError

logger = logging.getLogger(__name__)

# After its drain timeout a stopping process fails what it holds and exits; past this grace it
# is killed (it hung).
EXIT_GRACE_S = 10.0
# A process that holds sequences reports after every step (milliseconds each); one silent this
# long hung, and is killed and replaced (its sequences answered), checked every HANG_CHECK_S.
# Otherwise its clients would wait for their deadlines, and the server's writes to it would fill
# the socket and at last block the event loop.
HANG_S = 30.0
HANG_CHECK_S = 1.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where `service` is importable


class ProcessLane:
    """One lane's scheduler in a process of its own (module docstring)."""

    def __init__(
        self,
        spec: LaneSpec,
        *,
        max_steps: Callable[[int], int],
        observer: DecodeObserver,
        hang_s: float = HANG_S,
    ) -> None:
        self.name = spec.version.name
        self.policy = spec.policy
        self._spec = spec
        self._max_steps = max_steps
        self._observer = observer
        self._admission = DecodeAdmission(self.name, spec.policy)
        self._items: dict[int, DecodeItem] = {}  # unanswered, by id
        self._next_id = 0
        self._waiting = 0  # sequences of _items that have not joined a step yet
        self._waiting_rows = 0
        self._rows = 0  # rows of _items running in the process's batch
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None  # the socket closed
        self._outgoing: list[object] = []  # messages for the process, sent once per loop turn
        self._hang_s = hang_s
        self._heard_at = 0.0  # when the process last sent anything (monotonic)
        self._watchdog: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ DecodeScheduler's face

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def waiting_rows(self) -> int:
        return self._waiting_rows

    @property
    def encodes_ahead(self) -> bool:
        return False

    @property
    def available(self) -> bool:
        """Whether the lane takes work: its process is ready and it is not stopping."""
        ready = self._ready
        return (
            not self._stopping
            and ready is not None
            and ready.done()
            and not ready.cancelled()
            and ready.exception() is None
            and self._conn is not None
        )

    @property
    def pid(self) -> int | None:
        """The lane's process while it runs (None before it starts and after it ends)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        """Start the process (on the event loop); `until_ready` waits for its model."""
        self._loop = asyncio.get_running_loop()
        self._launch()
        self._watchdog = self._loop.call_later(HANG_CHECK_S, self._watch)

    async def until_ready(self) -> None:
        """Wait until the process has loaded its model; raises if it exited first."""
        assert self._ready is not None, "start() first"
        await asyncio.shield(self._ready)

    def submit(
        self,
        payloads: Sequence[Encoded],
        tokens: Sequence[int] | None = None,
        *,
        key: Hashable,
        timeout_s: float,
        on_token: Callable[[int], None] | None = None,
    ) -> list[DecodeItem]:
        """As `DecodeScheduler.submit`: checks and admission here, the sequences to the process."""
        del tokens
        if self._stopping:
            raise ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
        if not self.available or self._loop is None:
            raise ServiceError(ErrorKind.NOT_READY, f"model {self.name!r} is not running")
        steps = checked_steps(self.policy, key, (len(p.ids) for p in payloads), self._max_steps)
        assert isinstance(key, DecodingParams)  # checked_steps checked it
        count = len(payloads)
        refuse_if_full(
            self.name, self.policy, self._waiting, count, lambda: self.retry_after_s(count)
        )
        rows = key.beam_size * count
        self._admission.check(
            self._waiting_rows, self._rows, rows, timeout_s, retry_after=self.retry_after_s
        )
        now = time.monotonic()
        if not self._items:  # silent while it held nothing: the hang clock starts now
            self._heard_at = now
        loop = self._loop
        items = new_items(
            self._next_id, payloads, key, steps, loop.create_future, now, timeout_s, on_token
        )
        self._next_id += count
        for item in items:
            item.future.add_done_callback(self._on_answered(item.seq_id))
            self._items[item.seq_id] = item
        self._waiting += count
        self._waiting_rows += rows
        ids = tuple(item.seq_id for item in items)
        sources = tuple(item.src_ids for item in items)
        self._post(Submit(ids, sources, key, timeout_s, streamed=on_token is not None))
        return items

    def predicted_wait_s(self, rows: int = 0) -> float | None:
        return self._admission.predicted_wait_s(self._waiting_rows + rows, self._rows)

    def retry_after_s(self, extra: int = 0) -> int:
        return self._admission.retry_after_s(
            self._waiting_rows + extra, self._rows, self._waiting + extra
        )

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new work; the process finishes what it holds (up to `timeout_s`), fails the
        rest with SHUTTING_DOWN and exits."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()  # stopped while loading
        if self._conn is not None:
            self._post(Stop(timeout_s))
        process, ended = self._process, self._ended
        if process is None or ended is None:
            return
        limit = None if timeout_s is None else timeout_s + EXIT_GRACE_S
        try:
            await asyncio.wait_for(asyncio.shield(ended), limit)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            logger.error(
                "model %s: lane %d hung while stopping; killed", self.name, self._spec.index
            )
            process.kill()
            await asyncio.shield(ended)
        await asyncio.to_thread(process.wait)

    # ------------------------------------------------------------------ the process

    def _launch(self) -> None:
        assert self._loop is not None
        ours, theirs = socket.socketpair()
        with theirs:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])
                ),
            }
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service.decode_worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C is the server's to handle
            )
        conn = Connection(ours.detach())
        self._conn = conn
        self._ready = self._loop.create_future()
        self._ended = self._loop.create_future()
        readable = select.poll()
        readable.register(conn.fileno(), select.POLLIN)
        self._loop.add_reader(conn.fileno(), self._on_readable, conn, readable)
        self._send(self._spec)

    def _post(self, message: object) -> None:
        """Send `message` with the others of this turn of the event loop, in one write (each
        write costs a system call, and more when it wakes the process up)."""
        if not self._outgoing and self._loop is not None:
            self._loop.call_soon(self._send_posted)
        self._outgoing.append(message)

    def _send_posted(self) -> None:
        messages, self._outgoing = self._outgoing, []
        self._send(messages)

    def _send(self, message: object) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send(message)
        except OSError:  # the process is gone: _on_readable sees the socket closed
            logger.debug("model %s: lane %d's socket is closed", self.name, self._spec.index)

    def _on_readable(self, conn: Connection, readable: select.poll) -> None:
        """Every message that has arrived: one per call let reports wait in the socket behind
        the loop's other work (32 streaming users: a join's report reached the loop 17.7 ms
        after the join p50, 71.7 ms p90; reading all, 12.5 / 24.4 ms, stop 31). `readable` is
        made once: `conn.poll()` builds a selector per call."""
        self._heard_at = time.monotonic()
        try:
            while True:
                message = conn.recv()
                if isinstance(message, Report):
                    self._take(message)
                elif isinstance(message, Ready) and self._ready and not self._ready.done():
                    self._ready.set_result(None)
                if not readable.poll(0):
                    return
        except (EOFError, OSError):
            self._lost(conn)

    def _take(self, report: Report) -> None:
        """Apply one report: joins, streamed tokens, answers, then the step's statistics."""
        for seq_id, batch_size, joined_at in report.joined:
            item = self._items.get(seq_id)
            if item is not None and item.joined_at is None:
                item.batch_size, item.joined_at = batch_size, joined_at
                self._waiting -= 1
                self._waiting_rows -= item.beam_size
                self._rows += item.beam_size
        for seq_id, token in report.tokens:
            item = self._items.get(seq_id)
            if item is not None and item.on_token is not None:
                item.on_token(token)
        freed = 0
        for seq_id, translation in report.answers:
            item = self._settle(seq_id)
            if item is not None:
                freed += item.beam_size
                item.future.set_result(translation)
        for seq_id, failure in report.failures:
            item = self._settle(seq_id)
            if item is not None:
                freed += item.beam_size
                item.future.set_exception(failure.error())
        for reason, count in report.dropped:
            self._observer.on_dropped(reason, count)
        if report.step is not None:
            self._admission.observe_step(report.step.seconds, freed)
            self._observer.on_step(report.step)

    def _settle(self, seq_id: int) -> DecodeItem | None:
        """Take an unanswered item out of the counts (None: answered or cancelled already)."""
        item = self._items.pop(seq_id, None)
        if item is None:
            return None
        if item.joined_at is None:
            self._waiting -= 1
            self._waiting_rows -= item.beam_size
        else:
            self._rows -= item.beam_size
        return None if item.future.done() else item

    def _on_answered(self, seq_id: int) -> Callable[[asyncio.Future[object]], None]:
        def cancelled(future: asyncio.Future[object]) -> None:
            if future.cancelled() and seq_id in self._items:  # the client left
                self._settle(seq_id)
                self._post(Cancel((seq_id,)))

        return cancelled

    def _watch(self) -> None:
        """Kill a process that holds sequences and has been silent for `hang_s`: `_lost` then
        answers them and starts another."""
        assert self._loop is not None
        self._watchdog = self._loop.call_later(HANG_CHECK_S, self._watch)
        silent = time.monotonic() - self._heard_at
        if self._items and self.available and silent > self._hang_s and self._process:
            logger.error(
                "model %s: lane %d's process holds %d sequences and sent nothing for %.0f s: "
                "killing it",
                self.name,
                self._spec.index,
                len(self._items),
                silent,
            )
            self._process.kill()

    def _lost(self, conn: Connection) -> None:
        """The socket closed: the process ended (stopped) or died. Answer what it held."""
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())
        conn.close()
        self._conn = None
        was_ready = self._ready is not None and self._ready.done()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError("the lane's process exited while loading"))
        code = self._process.poll() if self._process is not None else None
        left = list(self._items)
        error = (
            ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
            if self._stopping
            else ServiceError(ErrorKind.INTERNAL, "the decoding process exited")
        )
        for seq_id in left:
            item = self._settle(seq_id)
            if item is not None:
                item.future.set_exception(error)
        if left:
            self._observer.on_dropped("shutdown" if self._stopping else "lost", len(left))
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if self._stopping:
            return
        logger.error(
            "model %s: lane %d's process exited (code %s) with %d sequences; %s",
            self.name,
            self._spec.index,
            code,
            len(left),
            "restarting it" if was_ready else "not restarting a process that never got ready",
        )
        if self._process is not None:
            process = self._process
            with contextlib.suppress(RuntimeError):  # no loop left to reap it on
                self._loop.run_in_executor(None, process.wait)
        if was_ready:
            self._launch()
