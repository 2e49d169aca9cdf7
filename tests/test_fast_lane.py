"""The inference routes' fast lane (service/fast_lane.py): the same answers as the FastAPI
routes, task API and Open Inference Protocol alike, and the route's own answer for everything it
hands over."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_service_api import BAD_INPUTS
from tests.test_translate_stream import read_events
from tests.test_v2_protocol import BAD_REQUESTS, binary_request, bytes_tensor, text_input

INFER = "/v2/models/sentiment/infer"
_binary_body, _binary_headers = binary_request(
    [({"name": "text", "shape": [2], "datatype": "BYTES"}, bytes_tensor("good", "bad"))],
    outputs=[{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
)

# (case, path, httpx request arguments): well-formed requests the lane answers, refusals that
# happen after parsing (the lane answers those too) and requests it hands to the route.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("classify", "/v1/classify", {"json": {"texts": ["A great film.", "Dull.", ""]}}),
    (
        "classify charset",
        "/v1/classify",
        {
            "content": b'{"texts": ["ok"]}',
            "headers": {"content-type": "Application/JSON; charset=utf-8"},
        },
    ),
    ("classify named", "/v1/classify", {"json": {"texts": ["x"], "model": "sentiment"}}),
    ("nli", "/v1/nli", {"json": {"pairs": [{"premise": "A man sings.", "hypothesis": "A song."}]}}),
    ("translate", "/v1/translate", {"json": {"texts": ["a dog runs .", "hello"]}}),
    ("translate beam", "/v1/translate", {"json": {"texts": ["a dog"], "beam_size": 2}}),
    ("stream", "/v1/translate", {"json": {"texts": ["a dog runs ."], "stream": True}}),
    ("stream two texts", "/v1/translate", {"json": {"texts": ["a", "b"], "stream": True}}),
    ("unknown model", "/v1/classify", {"json": {"texts": ["x"], "model": "nope"}}),
    ("wrong task", "/v1/classify", {"json": {"texts": ["x"], "model": "translator"}}),
    (
        "unknown version",
        "/v1/nli",
        {"json": {"pairs": [{"premise": "a", "hypothesis": "b"}], "version": "9"}},
    ),
    (
        "json+ type",
        "/v1/classify",
        {
            "content": b'{"texts": ["ok"]}',
            "headers": {"content-type": "application/x+json"},
        },
    ),
    (
        "duplicate key",
        "/v1/classify",
        {
            "content": b'{"texts": ["a"], "texts": ["b", "c"]}',
            "headers": {"content-type": "application/json"},
        },
    ),
    (
        "lone surrogate",
        "/v1/classify",
        {
            "content": b'{"texts": ["\\ud800"]}',
            "headers": {"content-type": "application/json"},
        },
    ),
    *BAD_INPUTS,
    # the Open Inference Protocol's infer: JSON, binary tensors, versions, and its refusals
    ("v2 json", INFER, {"json": text_input(data=["a fine film"])}),
    ("v2 binary", INFER, {"content": _binary_body, "headers": _binary_headers}),
    ("v2 version", "/v2/models/sentiment/versions/1/infer", {"json": text_input()}),
    ("v2 no such version", "/v2/models/sentiment/versions/7/infer", {"json": text_input()}),
    ("v2 unknown model", "/v2/models/nope/infer", {"json": text_input()}),
    (
        "v2 nli",
        "/v2/models/nli/infer",
        {
            "json": {
                "inputs": [
                    {
                        "name": "premise",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": ["A man sings."],
                    },
                    {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["A song."]},
                ]
            }
        },
    ),
    ("v2 translate", "/v2/models/translator/infer", {"json": text_input(data=["a dog runs ."])}),
    *[(f"v2 {case}", INFER, kwargs) for case, kwargs, _, _ in BAD_REQUESTS],
]


@pytest.fixture(scope="module")
def servers(
    launch_server: Callable[..., Any], model_repository: Path
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two real servers on the same repository: the fast lane on, and off (every request takes
    the FastAPI route)."""
    lane = launch_server(model_repository, fast_lane=True, max_body_bytes=4096)
    route = launch_server(model_repository, fast_lane=False, max_body_bytes=4096)
    with (
        httpx.Client(base_url=lane.url, timeout=60) as a,
        httpx.Client(base_url=route.url, timeout=60) as b,
    ):
        yield a, b


def stream_view(response: httpx.Response) -> tuple[str, list[tuple[str, object]]]:
    """A streamed answer as what must not depend on timing: the pieces' text joined, and the
    events after them; every piece but the first follows a whole word."""
    events = read_events(response)
    pieces = [str(data["text"]) for name, data in events if name == "piece"]
    assert not any(piece[:1].isalnum() for piece in pieces[1:]), pieces  # " word", "."
    return "".join(pieces), [(name, data) for name, data in events if name != "piece"]


@pytest.mark.parametrize(("case", "path", "request_kwargs"), CASES, ids=[c[0] for c in CASES])
def test_lane_answers_as_the_route_does(
    servers: tuple[httpx.Client, httpx.Client], case: str, path: str, request_kwargs: dict[str, Any]
) -> None:
    """Status, content type and body are the route's, for answers and refusals alike (JSON
    compared parsed; the lane's serializer writes floats as pydantic does)."""
    lane, route = servers
    ours, theirs = lane.post(path, **request_kwargs), route.post(path, **request_kwargs)
    assert ours.status_code == theirs.status_code, (case, ours.text, theirs.text)
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    assert ours.status_code < 500, (case, ours.text)
    if ours.headers["content-type"].startswith("application/json"):
        assert ours.json() == theirs.json(), case
    else:  # a stream: the same text in whole-word pieces (how many depends on timing: tokens
        # that queue up behind a busy loop leave as one piece), then the same last events
        assert stream_view(ours) == stream_view(theirs), case
    for name in ("retry-after", "inference-header-content-length", "www-authenticate"):
        assert ours.headers.get(name) == theirs.headers.get(name), (case, name)
    assert ours.headers["x-request-id"]


def test_a_body_over_the_limit_without_a_length_is_refused_by_the_lane(
    servers: tuple[httpx.Client, httpx.Client],
) -> None:
    """A chunked body (no Content-Length) passing max_body_bytes while the lane reads it: 413
    naming the limit, as the route answers, and no 5xx."""
    texts = json.dumps({"texts": ["a long text " * 50] * 10}).encode()
    assert len(texts) > 4096
    for client in servers:
        reply = client.post(
            "/v1/classify",
            content=iter([texts[:1000], texts[1000:]]),  # an iterator: sent chunked
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 413, reply.text
        assert "max_body_bytes" in reply.json()["error"] and reply.json()["type"]


def test_the_lane_takes_well_formed_requests_and_hands_the_rest_on(
    app_client: Callable[..., Any],
) -> None:
    """In process, the lane in front of a recording app: a well-formed classify and a V2 infer
    are answered without reaching it; a body the model refuses and another content type reach it
    with their body intact; a client gone mid-body is answered 499 (for the log
    and the metrics)."""
    from service.context import INFO_KEY
    from service.fast_lane import FastLane
    from service.request_info import RequestInfo

    reached: list[tuple[str, bytes]] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        reached.append((scope["path"], message["body"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def call(
        lane: FastLane, path: str, body: bytes, content_type: bytes, gone: bool = False
    ) -> int:
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"content-type", content_type)],
            INFO_KEY: RequestInfo(request_id="t", started=asyncio.get_running_loop().time()),
        }
        sent: list[dict[str, Any]] = []
        chunks = [{"type": "http.request", "body": body, "more_body": gone}]
        if gone:  # the client leaves halfway through its body
            chunks.insert(0, {"type": "http.disconnect"})

        async def receive() -> Any:
            if chunks:
                return chunks.pop()
            await asyncio.Event().wait()  # the client stays: the disconnect watcher waits
            raise AssertionError("unreachable")

        async def send(message: Any) -> None:
            sent.append(message)

        await lane(scope, receive, send)
        return int(sent[0]["status"])

    with app_client() as client:
        lane = FastLane(route, client.app.state.nlpserve)
        run = client.portal.call  # the app's event loop: the models' queues live there
        good = b'{"texts": ["a fine film"]}'
        assert run(call, lane, "/v1/classify", good, b"application/json") == 200
        infer = json.dumps(text_input(data=["a fine film"])).encode()
        assert run(call, lane, INFER, infer, b"") == 200  # tritonclient sends no content type
        assert reached == []
        handed = [
            ("/v1/classify", b'{"texts": []}', b"application/json"),
            ("/v1/nli", b'{"pairs": []}', b"text/plain"),
        ]
        for path, body, content_type in handed:
            assert run(call, lane, path, body, content_type) == 299
        assert reached == [(path, body) for path, body, _ in handed]
        # gone mid-body: counted as the client's doing (499), not a server error, not handed on
        assert run(call, lane, "/v1/classify", b'{"texts": ["a', b"application/json", True) == 499
        assert len(reached) == len(handed)
