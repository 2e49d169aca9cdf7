"""Streamed translation: `POST /v1/translate` with `"stream": true` answers Server-Sent Events.

Events (each `data:` is one JSON object):

    event: piece   data: {"text": " Hund"}              newly decoded text, whole words only
    event: done    data: {"model", "version", "translation", "tokens", "truncated"}
    event: error   data: {"error": "...", "type": "timeout"}   the stream ends without `done`

The text decoded so far is detokenised after every step (after the first piece, the tokens
that queued up behind a busy event loop together), and what is new is sent up to the end of its
last whole word (`TranslatorEngine.whole_words`: a word is whole at its last subword when the
vocabulary marks word ends, as the translator's does, else when the next word starts): a word
whose subwords are still arriving waits, so a client never sees "Hun" then "d". A piece starts
with the space that separates it from the one before ("Ein", " Hund", "."). The `done` event
carries the whole translation (the same text as without streaming) and the number of generated
tokens (without <eos>).

Greedy search only: beam search reorders its hypotheses until the end, so it has no stable prefix
to stream. Refusals (404, 413, 422, 429, 503) happen before the stream starts, as plain HTTP
errors. A client that closes the stream cancels its sequence, whose rows leave the running batch
at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from starlette.types import Send

from service.decode_items import DecodeItem
from service.engines.translator import TranslatorEngine
from service.errors import ErrorKind, ServiceError
from service.served_model import Disconnected

MEDIA_TYPE = "text/event-stream"
# The stream's headers besides its type: no cache, and no buffering by a proxy (nginx).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_START_HEADERS = [
    (b"content-type", f"{MEDIA_TYPE}; charset=utf-8".encode()),  # as StreamingResponse says
    *((k.lower().encode(), v.encode()) for k, v in HEADERS.items()),
]
_END = -1  # queue marker: the sequence finished or failed
_TIMEOUT = -2  # queue marker: the deadline passed


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class TranslationStream:
    """One admitted greedy sequence; `events()` yields its SSE frames as it decodes."""

    def __init__(
        self,
        *,
        model: str,
        version: str,
        engine: TranslatorEngine,
        truncated: bool,
        deadline: float,
    ) -> None:
        self.model, self.version = model, version
        self.engine = engine
        self.truncated = truncated
        self.deadline = deadline  # event loop time
        # The admitted request's place in the drain (and its counting), released at the end.
        self.closer = contextlib.ExitStack()
        self.tokens: asyncio.Queue[int] = asyncio.Queue()
        self.item: DecodeItem | None = None
        self.steps = 0  # decode steps its sequence ran (greedy: one token each), so far

    def on_token(self, token: int) -> None:
        self.steps += 1
        self.tokens.put_nowait(token)

    def attach(self, item: DecodeItem) -> None:
        self.item = item
        item.future.add_done_callback(lambda _: self.tokens.put_nowait(_END))

    # Where its sequence stands, for the request's log line and trace (service/tracing.py):
    # written by the scheduler's thread when it joins (`rows_at_join` first), read here.

    @property
    def enqueued_at(self) -> float:
        assert self.item is not None
        return self.item.enqueued_at

    @property
    def joined_at(self) -> float | None:
        """When the sequence joined the running decode batch (None: not yet, or never)."""
        return None if self.item is None else self.item.joined_at

    @property
    def rows_at_join(self) -> int:
        """Decoder rows of the step it joined (0: it has not joined)."""
        return 0 if self.item is None else self.item.batch_size

    async def events(self) -> AsyncGenerator[bytes, None]:
        assert self.item is not None
        # One timer for the whole stream puts a marker in the queue at the deadline (an
        # asyncio.wait_for per token made a Task and a timer per token on Python 3.11).
        timer = asyncio.get_running_loop().call_at(self.deadline, self.tokens.put_nowait, _TIMEOUT)
        ids: list[int] = []
        sent = ""
        try:
            ended = timed_out = False
            while not ended:
                # After the first piece (it leaves as soon as its word is whole), every token that
                # has arrived, in one piece: behind a busy event loop a stream's tokens queue up,
                # and a frame each would add to the loop's work
                arrived = [await self.tokens.get()]
                while sent and not self.tokens.empty():
                    arrived.append(self.tokens.get_nowait())
                before = len(ids)
                for token in arrived:
                    timed_out, ended = token == _TIMEOUT, token in (_END, _TIMEOUT)
                    if ended:
                        break
                    ids.append(token)
                piece = _new_part(self.engine.whole_words(ids), sent) if len(ids) > before else ""
                if piece:
                    sent += piece
                    yield sse("piece", {"text": piece})
                if timed_out:
                    yield _error(ServiceError(ErrorKind.TIMEOUT, "the request timed out"))
                    return
            if self.item.future.cancelled():  # the client left (send_events): nobody to tell
                return
            try:
                translation = self.item.future.result()
            except ServiceError as e:
                yield _error(e)
                return
            except Exception:
                yield _error(ServiceError(ErrorKind.INTERNAL, "inference failed"))
                return
            if translation.startswith(sent) and len(translation) > len(sent):
                yield sse("piece", {"text": translation[len(sent) :]})
            generated = len(ids) - (1 if ids and ids[-1] == self.engine.generator.eos_id else 0)
            yield sse(
                "done",
                {
                    "model": self.model,
                    "version": self.version,
                    "translation": translation,
                    "tokens": generated,
                    "truncated": self.truncated,
                },
            )
        finally:
            timer.cancel()
            self.item.future.cancel()  # client gone or stream over: the rows leave next step
            self.closer.close()


async def send_events(stream: TranslationStream, disconnected: Disconnected, send: Send) -> None:
    """The stream's response on a bare ASGI `send` (the fast lane, service/fast_lane.py): the
    same headers and frames as the route's StreamingResponse without its task group per
    request. The client leaving (`disconnected`) cancels the sequence, which ends the frames."""
    assert stream.item is not None
    item = stream.item
    await send({"type": "http.response.start", "status": 200, "headers": _START_HEADERS})
    watcher = asyncio.ensure_future(disconnected())
    watcher.add_done_callback(lambda _: item.future.cancel())  # a no-op once it is answered
    try:
        # aclosing: if a send raises, the frames' own `finally` (the sequence cancelled, the
        # drain's count released) runs now, not when the generator is collected
        async with contextlib.aclosing(stream.events()) as frames:
            async for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()  # its callback then cancels an answered future: a no-op


def _new_part(text: str, sent: str) -> str:
    """What `text` adds after `sent` ("" if the detokenised text no longer extends it)."""
    return text[len(sent) :] if text.startswith(sent) else ""


def _error(error: ServiceError) -> bytes:
    return sse("error", {"error": error.message, "type": error.kind.value})
