"""One lane of a step-scheduled translator in a process of its own:
`python -m service.decode_worker FD`, started by the server (service/decode_process.py), which
holds the other end of the socket FD (messages: service/decode_wire.py).

Why a process: lanes that are threads of the server share its GIL with the event loop, and a
lane waits for it between its ONNX Runtime runs (2-vCPU VM, recipe model, 32 users: a step took
4.15-4.22 ms of wall time for 2.81-2.84 ms of CPU, the server used 1.62-1.69 of 2 cores,
reports/translation-benchmark.md, stop 30). Here the lane's Python has a GIL of its own.

The process runs a plain `DecodeScheduler`, stepped on its one thread between reads of the
server's messages (submit, cancel, stop; `serve`). Answers, streamed tokens, joins and the step's
statistics go back in one `Report` after each step. The futures of the scheduler's items
belong to an event loop that never runs: the scheduler only reads whether one is done (cancelled)
and the `Outbox` answers the server instead of setting them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from service.decode_items import Answer, DecodeItem, StepStats
from service.decode_scheduler import DecodeScheduler
from service.decode_wire import Cancel, Failure, LaneSpec, Ready, Report, Stop, Submit
from service.engines.tokenization import Encoded
from service.engines.translator import TranslatorEngine
from service.errors import ServiceError
from service.logs import configure_logging

logger = logging.getLogger(__name__)

# A lane's process yields the CPU to the server's event loop when both want it: a lane steps
# all the time under load, the loop answers clients. Measured without a clear effect either way
# on the 2-vCPU VM (32 streaming users, two rounds each: first piece p50 41.3 / 40.1 ms at nice
# 10, 43.8 / 37.0 at nice 0, reports/translation-benchmark.md, stop 31); kept as the intent.
LANE_NICENESS = 10


def _streamed(token: int) -> None:
    """A streamed item's `on_token` here: its tokens go to the server through the Outbox."""


class Outbox:
    """What goes back to the server: the scheduler's delivery and observer, flushed as one
    `Report` after each step and at the end (all on the lane's one thread)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._report = Report()
        self._server_ids: dict[DecodeItem, int] = {}
        self._by_server_id: dict[int, DecodeItem] = {}
        self._unjoined: set[DecodeItem] = set()
        self._futures = asyncio.new_event_loop()  # never runs: see the module docstring

    # --- Delivery
    def new_future(self) -> asyncio.Future[Any]:
        return self._futures.create_future()

    def deliver(self, answers: list[Answer], tokens: list[tuple[DecodeItem, int]]) -> None:
        report = self._report
        for item, token in tokens:
            server_id = self._server_ids.get(item)
            if server_id is not None:  # else cancelled: its stream has ended
                report.tokens.append((server_id, token))
        for item, result, error in answers:
            server_id = self._forget(item)
            if server_id is None or item.future.done():
                continue  # cancelled by the server: it answered its client already
            if error is not None:
                report.failures.append((server_id, Failure.of(error)))
            else:
                report.answers.append((server_id, result))

    # --- DecodeObserver
    def on_step(self, stats: StepStats) -> None:
        self._report.step = stats
        joined = [item for item in self._unjoined if item.joined_at is not None]
        for item in joined:
            self._unjoined.discard(item)
            assert item.joined_at is not None
            self._report.joined.append((self._server_ids[item], item.batch_size, item.joined_at))

    def on_dropped(self, reason: str, count: int) -> None:
        self._report.dropped.append((reason, count))

    # --- the server's messages
    def track(self, items: list[DecodeItem], server_ids: tuple[int, ...]) -> None:
        for item, server_id in zip(items, server_ids, strict=True):
            self._server_ids[item] = server_id
            self._by_server_id[server_id] = item
            self._unjoined.add(item)

    def refuse(self, server_ids: tuple[int, ...], error: ServiceError) -> None:
        self._report.failures.extend((i, Failure.of(error)) for i in server_ids)

    def cancel(self, server_ids: tuple[int, ...]) -> None:
        for server_id in server_ids:
            item = self._by_server_id.get(server_id)
            if item is not None:
                item.future.cancel()  # the scheduler drops it at the next boundary
                self._forget(item)

    def flush(self) -> None:
        """Send what was gathered, if anything (a server gone: nothing to tell)."""
        report, self._report = self._report, Report()
        if report:
            try:
                self._conn.send(report)
            except OSError:
                logger.debug("the server closed the lane's socket")

    def _forget(self, item: DecodeItem) -> int | None:
        self._unjoined.discard(item)
        server_id = self._server_ids.pop(item, None)
        if server_id is not None:
            self._by_server_id.pop(server_id, None)
        return server_id


def take_messages(
    conn: Connection,
    readable: select.poll,
    scheduler: DecodeScheduler,
    outbox: Outbox,
    *,
    block: bool,
) -> None:
    """Apply the server's messages that have arrived (`block`: wait for the first). Its socket
    closed: the server is gone, nobody to answer: the lane aborts."""
    try:
        if block:
            for message in conn.recv():
                take(message, scheduler, outbox)
        while readable.poll(0):  # a poll object made once (`conn.poll` builds a selector)
            for message in conn.recv():
                take(message, scheduler, outbox)
    except (EOFError, OSError):
        scheduler.begin_stop()
        scheduler.abort()


def take(message: object, scheduler: DecodeScheduler, outbox: Outbox) -> None:
    if isinstance(message, Submit):
        payloads = [Encoded(ids, [0] * len(ids), False) for ids in message.sources]
        try:
            items = scheduler.submit(
                payloads,
                key=message.params,
                timeout_s=message.timeout_s,
                on_token=_streamed if message.streamed else None,
            )
        except ServiceError as error:
            outbox.refuse(message.ids, error)
        else:
            outbox.track(items, message.ids)
    elif isinstance(message, Cancel):
        outbox.cancel(message.ids)
    elif isinstance(message, Stop):  # it still takes Cancels: clients leave while it drains
        scheduler.begin_stop()
        if message.timeout_s is not None:
            timer = threading.Timer(message.timeout_s, scheduler.abort)
            timer.daemon = True
            timer.start()


def _pin(core: int, index: int) -> None:
    """Run on `core` only (`decode_lane_pinning`): this thread, where the lane steps, and the
    threads started later (timers), which inherit it. A core the process may not use leaves it
    unpinned, with a warning."""
    try:
        os.sched_setaffinity(0, {core})
    except (OSError, AttributeError) as error:
        logger.warning("lane %d: not pinned to core %d: %s", index, core, error)
    else:
        logger.info("lane %d pinned to core %d", index, core)


def serve(conn: Connection) -> None:
    """Build the lane the server's `LaneSpec` describes, say `Ready`, then take messages and
    step, one thread, until stopped: a message waits for the step boundary (a lane's step is a
    few ms), and between steps the socket is read without blocking, so the server's writes do
    not wake a sleeping reader thread (with one, py-spy put the socket writes at
    8-9% of each side's samples, reports/translation-benchmark.md, stop 31)."""
    # The server decides when a lane ends (Stop, or its socket closing when it exits or dies): a
    # Ctrl-C or SIGTERM sent to the whole process group must not end it under a draining server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(LANE_NICENESS)
    spec: LaneSpec = conn.recv()
    configure_logging(spec.log_level, spec.log_format)
    if spec.core is not None:
        _pin(spec.core, spec.index)
    engine = TranslatorEngine(spec.version, spec.session)
    if spec.warmup:
        engine.warmup(1)
    outbox = Outbox(conn)
    scheduler = DecodeScheduler(
        f"{spec.version.name}-lane{spec.index}",
        engine.decode_batch(),
        spec.policy,
        finish=engine.finish,
        max_steps=engine.generator.max_steps,
        observer=outbox,
    )
    scheduler.attach(outbox)
    conn.send(Ready())
    readable = select.poll()
    readable.register(conn.fileno(), select.POLLIN)
    try:
        while not scheduler.finished:
            take_messages(conn, readable, scheduler, outbox, block=scheduler.idle)
            scheduler.step()
            outbox.flush()
    except BaseException:
        logger.exception("model %s: lane %d's loop crashed", spec.version.name, spec.index)
    finally:
        scheduler.end()
        outbox.flush()
        conn.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
