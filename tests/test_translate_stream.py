"""Streamed translation (POST /v1/translate with "stream": true) on a real uvicorn, read with an
httpx streaming client: Server-Sent Events of whole words, then the whole translation; refusals
before the stream; a client that closes the stream frees its sequence at the next step.

The translator is a tiny random one with a long positional table, so a greedy decode of 1000
tokens takes long enough for a client to leave in the middle of it.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import streaming
from service.engines.translator import TranslatorEngine
from service.streaming import TranslationStream
from tests.conftest import ServerProcess

TEXT = "A dog runs through the park."


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, launch_server: Callable[..., ServerProcess]
) -> ServerProcess:
    from export.tiny import tiny_translator_checkpoint
    from export.translator import export_translator

    root = tmp_path_factory.mktemp("stream")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation noise (conftest)
        warnings.simplefilter("ignore", DeprecationWarning)
        # seed 2: its greedy output is one marked whole word over and over: a stream of many pieces
        checkpoint = tiny_translator_checkpoint(root / "checkpoint", seed=2, max_positions=2048)
        export_translator(checkpoint, root / "repository", threads=1, max_new_tokens=16)
    return launch_server(root / "repository")


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, object]]]:
    events, event = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((event or "message", json.loads(line.removeprefix("data: "))))
    return events


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_stream_sends_whole_word_pieces_then_the_translation(server: ServerProcess) -> None:
    """Pieces end where a word does (no word split), join to the final translation, which equals the
    non-streamed greedy answer; `tokens` counts the generated tokens."""
    body = {"texts": [TEXT], "max_new_tokens": 24}
    with httpx.stream(
        "POST", server.url + "/v1/translate", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    plain = httpx.post(server.url + "/v1/translate", json={**body, "beam_size": 1}, timeout=30)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"piece"} and len(names) > 2
    pieces = [str(data["text"]) for _, data in events[:-1]]
    assert not any(p[:1].isalnum() for p in pieces[1:])  # " word" or ".": none splits a word
    done = events[-1][1]
    assert "".join(pieces) == done["translation"] == plain.json()["translations"][0]
    assert done["model"] == "translator" and done["truncated"] is False
    assert 0 < int(str(done["tokens"])) <= 24


def test_a_stream_logs_its_batch_size_but_sends_no_header(server: ServerProcess) -> None:
    """A stream's headers leave before its sequence joins a decode step: no X-Batch-Size (not a
    misleading 0). Its access-log line, written once the stream has ended, has the rows of the
    decode step the sequence joined (1: it decoded alone)."""
    body = {"texts": [TEXT], "max_new_tokens": 8, "stream": True}
    request_id = "stream-batch-size"
    with httpx.stream(
        "POST",
        server.url + "/v1/translate",
        json=body,
        headers={"x-request-id": request_id},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert "x-batch-size" not in response.headers
        events = read_events(response)
    assert events[-1][0] == "done"
    record = server.wait_for_log_record(request_id)
    assert record["status"] == 200 and record["model"] == "translator"
    assert record["batch_size"] == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"texts": [TEXT], "stream": True, "beam_size": 4}, 422, "greedy"),
        ({"texts": [TEXT, TEXT], "stream": True}, 422, "one text"),
        ({"texts": [TEXT], "stream": "yes"}, 422, "stream"),
    ],
)
def test_streams_that_cannot_be_served_are_refused_before_they_start(
    server: ServerProcess, body: dict[str, object], status: int, words: str
) -> None:
    """Beam search, several texts or a non-boolean flag: a JSON 422 naming the problem."""
    response = httpx.post(server.url + "/v1/translate", json=body, timeout=30)
    assert response.status_code == status
    assert words in response.text


def test_closing_the_stream_frees_the_sequence(server: ServerProcess) -> None:
    """A client that reads one piece of a 1000-token decode and closes the stream: the
    scheduler drops its sequence (cancelled) instead of decoding it to the end."""
    before = metric(
        server, "nlpserve_decode_dropped_sequences_total", model="translator", reason="cancelled"
    )
    finished_before = metric(server, "nlpserve_decode_finished_sequences_total", model="translator")
    body = {"texts": [TEXT], "stream": True, "max_new_tokens": 1000}
    with httpx.stream("POST", server.url + "/v1/translate", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # first piece read: leave
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        dropped = metric(
            server,
            "nlpserve_decode_dropped_sequences_total",
            model="translator",
            reason="cancelled",
        )
        if dropped > before:
            break
        time.sleep(0.05)
    assert dropped == before + 1
    finished = metric(server, "nlpserve_decode_finished_sequences_total", model="translator")
    assert finished == finished_before
    assert metric(server, "nlpserve_decode_running_sequences_count", model="translator") > 0


def test_openapi_documents_the_event_stream(server: ServerProcess) -> None:
    """/openapi.json lists text/event-stream for /v1/translate and the `stream` field."""
    spec = httpx.get(server.url + "/openapi.json").json()
    ok = spec["paths"]["/v1/translate"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in ok
    assert "stream" in spec["components"]["schemas"]["TranslateRequest"]["properties"]


def test_scheduler_metrics_are_exported(server: ServerProcess) -> None:
    """/metrics has the step scheduler's families for the translator after some decoding:
    rows per step, joins per step, step time, cache tokens, finished sequences."""
    httpx.post(server.url + "/v1/translate", json={"texts": [TEXT, "A cat."]}, timeout=30)
    name = "nlpserve_decode_"
    for sample in (
        "running_sequences_count",
        "joins_per_step_sum",
        "step_seconds_count",
        "finished_sequences_total",
    ):
        assert metric(server, name + sample, model="translator") > 0, sample
    text = httpx.get(server.url + "/metrics").text
    assert 'nlpserve_decode_cache_tokens{model="translator"}' in text


def test_models_list_says_the_translator_is_step_scheduled(server: ServerProcess) -> None:
    """/v1/models reports scheduling "step" for the translator."""
    models = httpx.get(server.url + "/v1/models").json()["models"]
    (translator,) = [m for m in models if m["name"] == "translator"]
    assert translator["batching"]["scheduling"] == "step"


def words(ids: list[int]) -> str:
    """A stand-in detokenizer for the streams below: every token a word."""
    return " ".join(f"w{i}" for i in ids)


def bare_stream(
    deadline_in_s: float,
    finish: Callable[[list[int]], str] = words,
    word_end_ids: frozenset[int] | None = None,
) -> Any:
    """(stream, item): a TranslationStream over a stand-in engine (the real `whole_words`),
    attached to a stand-in item whose future the test answers (on the running event loop)."""
    loop = asyncio.get_running_loop()
    engine = SimpleNamespace(
        finish=finish,
        generator=SimpleNamespace(eos_id=2),
        encoder=SimpleNamespace(word_end_ids=word_end_ids),
    )
    engine.whole_words = lambda ids: TranslatorEngine.whole_words(engine, ids)  # type: ignore
    stream = TranslationStream(
        model="translator", version="1", engine=engine,  # type: ignore[arg-type]
        truncated=False, deadline=loop.time() + deadline_in_s,
    )  # fmt: skip
    item = SimpleNamespace(future=loop.create_future())
    stream.attach(item)  # type: ignore[arg-type]
    return stream, item


def test_stream_past_its_deadline_ends_with_a_timeout_event() -> None:
    """No token before the stream's deadline: an `error` event of type timeout ends it, and the
    sequence is cancelled (its rows leave at the next step)."""

    async def scenario() -> tuple[list[bytes], bool]:
        stream, item = bare_stream(0.05, finish=lambda ids: "")
        frames = [frame async for frame in stream.events()]
        return frames, item.future.cancelled()

    frames, cancelled = asyncio.run(scenario())
    assert len(frames) == 1 and frames[0].startswith(b"event: error\n")
    assert json.loads(frames[0].split(b"data: ")[1])["type"] == "timeout"
    assert cancelled


def test_tokens_that_arrived_together_go_out_as_one_piece() -> None:
    """Behind a busy event loop a stream's tokens queue up: after the first piece (which leaves
    as soon as its word is whole), those waiting when its frames resume make one piece (whole
    words still), not one frame each; a token alone makes its own."""

    async def scenario() -> list[tuple[str, dict[str, object]]]:
        stream, item = bare_stream(30)
        for token in (5, 6, 7):
            stream.on_token(token)
        frames = stream.events()
        sent = [await anext(frames)]  # "w5": the first piece does not wait for w7
        for token in (8, 9):
            stream.on_token(token)
        sent.append(await anext(frames))  # w6 to w8 together
        stream.on_token(10)
        sent.append(await anext(frames))
        item.future.set_result(words([5, 6, 7, 8, 9, 10]))
        sent += [frame async for frame in frames]
        return [
            (frame.split(b"\n")[0][7:].decode(), json.loads(frame.split(b"data: ")[1]))
            for frame in sent
        ]

    events = asyncio.run(scenario())
    assert [name for name, _ in events] == ["piece", "piece", "piece", "piece", "done"]
    assert [data["text"] for _, data in events[:4]] == ["w5", " w6 w7 w8", " w9", " w10"]
    assert events[4][1]["translation"] == "w5 w6 w7 w8 w9 w10" and events[4][1]["tokens"] == 6


def test_tokens_queued_before_the_deadline_still_go_out_before_its_error() -> None:
    """The deadline's marker queued behind tokens (a busy loop): their piece first, then the
    timeout error, and the sequence is cancelled."""

    async def scenario() -> tuple[list[bytes], bool]:
        stream, item = bare_stream(30)
        for token in (5, 6):
            stream.on_token(token)
        stream.tokens.put_nowait(streaming._TIMEOUT)  # as the deadline's timer puts it
        frames = [frame async for frame in stream.events()]
        return frames, item.future.cancelled()

    frames, cancelled = asyncio.run(scenario())
    assert frames[0] == streaming.sse("piece", {"text": "w5"})
    assert frames[1].startswith(b"event: error\n") and len(frames) == 2
    assert json.loads(frames[1].split(b"data: ")[1])["type"] == "timeout"
    assert cancelled


def test_a_marked_word_end_sends_its_word_without_waiting_for_the_next() -> None:
    """A vocabulary that marks word ends (the translator's): the first piece leaves with the
    first token when that token ends its word, one step sooner than a space could tell; a token
    that does not end its word waits for the one that does."""

    async def scenario() -> list[bytes]:
        stream, item = bare_stream(30, word_end_ids=frozenset({5, 7}))
        frames = stream.events()
        stream.on_token(5)
        sent = [await anext(frames)]  # w5 ends its word: no wait for token 6
        stream.on_token(6)  # starts a word that token 7 ends
        stream.on_token(7)
        sent.append(await anext(frames))
        item.future.set_result(words([5, 6, 7]))
        return sent + [frame async for frame in frames]

    frames = asyncio.run(scenario())
    assert frames[0] == streaming.sse("piece", {"text": "w5"})
    assert frames[1] == streaming.sse("piece", {"text": " w6 w7"})
    assert frames[2].startswith(b"event: done\n")
