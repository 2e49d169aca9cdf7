"""The service as an attacker and an SRE see it: a real uvicorn on loopback, hostile input on
every path, protocol abuse, slow and idle clients, API keys on every route, broken models,
overload with a deadline and SIGTERM under keep-alive load.

The promises checked (DESIGN.md): no client input yields a 5xx; every error is JSON with a
message and no stack trace, path or exception name; every response carries X-Request-ID;
unauthenticated requests get 401 before their body is read; every request gets exactly one
answer (200, a 4xx, a 429 with Retry-After, or a 503 with Connection: close) or a refused
connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, clone_model

pytestmark = pytest.mark.timeout(120)

KEY = "adversarial-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {
    "max_items_per_request": 8,
    "max_text_chars": 200,
    "max_body_bytes": 65_536,
    "header_timeout_s": 2,
    "max_header_bytes": 8192,
    "max_connections": 48,
}
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/work/|/tmp/|Error\(|Exception\b")


def check_answer(reply: httpx.Response, unavailable: bool = False) -> httpx.Response:
    """What every answer must look like, whatever was sent (503 only where `unavailable`)."""
    allowed = reply.status_code < 500 or (unavailable and reply.status_code == 503)
    assert allowed, (reply.status_code, reply.text[:300])
    assert reply.headers.get("x-request-id"), reply.headers
    if reply.status_code >= 400:
        body = reply.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        assert not LEAKS.search(body["error"]), body["error"]
    return reply


@pytest.fixture(scope="module")
def repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("adversarial") / "repository"
    shutil.copytree(model_repository, target)
    return target


@pytest.fixture(scope="module")
def server(
    repository: Path, launch_server: Callable[..., ServerProcess]
) -> Iterator[ServerProcess]:
    server = launch_server(repository, api_keys=KEY, **LIMITS)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def post_raw(http: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return check_answer(
        http.post(path, content=body, headers={"content-type": "application/json", **headers})
    )


# ----------------------------------------------------------------------- hostile text


SURROGATES = ["\\ud800 hi", "\\udfff", "x\\udbff", "ok \\ud83d"]  # JSON escapes, lone halves
V2_TEXT = {"name": "text", "shape": [1], "datatype": "BYTES"}


@pytest.mark.parametrize("escaped", SURROGATES)
def test_lone_surrogates_are_422_naming_the_item(http: httpx.Client, escaped: str) -> None:
    cases = [
        ("/v1/classify", '{"texts": ["fine", "%s"]}', "texts[1]"),
        ("/v1/nli", '{"pairs": [{"premise": "a", "hypothesis": "%s"}]}', "pairs[0].hypothesis"),
        ("/v1/translate", '{"texts": ["%s"]}', "texts[0]"),
        (
            "/v2/models/sentiment/infer",
            '{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", '
            '"data": ["ok", "%s"]}]}',
            "'text' element 1",
        ),
        (
            "/v2/models/translator/infer",
            '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["%s"]}]}',
            "'text' element 0",
        ),
    ]
    for path, template, where in cases:
        reply = post_raw(http, path, (template % escaped).encode())
        assert reply.status_code == 422, (path, reply.text)
        assert where in reply.json()["error"] and "surrogate" in reply.json()["error"]


@pytest.mark.parametrize(
    "text",
    [
        "nul \x00 inside",
        "مرحبا بالعالم \u202e reversed",
        "zero\u200bwidth\ufeff joiners\u200d",
        "emoji 😀👍🏽 and 𝕏",
        "\t\n\r ",
        "",
    ],
)
def test_unusual_but_valid_unicode_is_served(http: httpx.Client, text: str) -> None:
    assert check_answer(http.post("/v1/classify", json={"texts": [text]})).status_code == 200
    pair = {"premise": text, "hypothesis": text}
    assert check_answer(http.post("/v1/nli", json={"pairs": [pair]})).status_code == 200
    reply = check_answer(http.post("/v1/translate", json={"texts": [text], "max_new_tokens": 4}))
    assert reply.status_code == 200


def test_bytes_that_are_not_utf8(http: httpx.Client) -> None:
    reply = post_raw(http, "/v1/classify", b'{"texts": ["caf\xe9"]}')
    assert reply.status_code == 400 and "UTF-8" in reply.json()["error"], reply.text
    binary = b"\x02\x00\x00\x00\xff\xfe"  # one BYTES element (length LE), invalid UTF-8
    header = json.dumps(
        {"inputs": [{**V2_TEXT, "parameters": {"binary_data_size": len(binary)}}]}
    ).encode()
    reply = post_raw(
        http,
        "/v2/models/sentiment/infer",
        header + binary,
        **{"inference-header-content-length": str(len(header))},
    )
    assert reply.status_code == 400 and "UTF-8" in reply.json()["error"], reply.text


# ----------------------------------------------------------------------- JSON abuse


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_deep_nesting_is_a_client_error(http: httpx.Client, opener: str, closer: str) -> None:
    deep = (opener * 10_000 + "1" + closer * 10_000).encode()  # under max_body_bytes
    for path in ("/v1/classify", "/v1/nli", "/v1/translate", "/v2/models/sentiment/infer"):
        reply = post_raw(http, path, deep)
        assert reply.status_code in (400, 422), (path, reply.status_code)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"texts"',
        b"{",
        b'{"texts": "a single string"}',
        b'{"texts": [1, 2]}',
        b'{"texts": [["nested"]]}',
        b'{"texts": null}',
        b'{"texts": []}',
        b'{"texts": ["a"], "model": 7}',
        b'{"texts": ["a"], "model": "no-such-model"}',
        b'{"texts": ["a"], "model": "nli"}',
        b'{"texts": ["a"], "unknown": true}',
        b'{"texts": ["a"], "texts": ["b", "c"]}',  # duplicate key: the last one wins
        b'{"texts": ["a"]} trailing',
        b'{"texts": ["a"], "beam_size": 2}',
        b"\xef\xbb\xbf{}",
        b'{"texts": ["' + b"a" * 201 + b'"]}',
        b'{"texts": ' + json.dumps(["x"] * 9).encode() + b"}",
    ],
)
def test_malformed_classify_bodies_are_4xx(http: httpx.Client, body: bytes) -> None:
    post_raw(http, "/v1/classify", body)


def test_limits_at_and_one_past_their_value(http: httpx.Client) -> None:
    def classify(texts: list[str]) -> int:
        return check_answer(http.post("/v1/classify", json={"texts": texts})).status_code

    assert classify(["x"] * 8) == 200
    assert classify(["x"] * 9) == 413
    assert classify(["x" * 200]) == 200
    assert classify(["x" * 201]) == 413
    pairs = [{"premise": "a", "hypothesis": "b"}] * 9
    assert check_answer(http.post("/v1/nli", json={"pairs": pairs})).status_code == 413

    def translate(**params: int) -> int:
        body = {"texts": ["a"], **params}
        return check_answer(http.post("/v1/translate", json=body)).status_code

    assert translate(beam_size=16, max_new_tokens=2) == 200
    assert translate(beam_size=17) == 422
    assert translate(beam_size=0) == 422
    assert translate(max_new_tokens=1024, beam_size=1) == 200
    assert translate(max_new_tokens=1025) == 422
    for beam in ("x", 17, True, 1.5):
        v2 = {"inputs": [{**V2_TEXT, "data": ["a"]}], "parameters": {"beam_size": beam}}
        reply = check_answer(http.post("/v2/models/translator/infer", json=v2))
        assert 400 <= reply.status_code < 500, (beam, reply.status_code)

    at_limit = b'{"texts": ["a"]' + b" " * (65_536 - 16) + b"}"  # JSON whitespace
    assert len(at_limit) == 65_536
    assert post_raw(http, "/v1/classify", at_limit).status_code == 200
    assert post_raw(http, "/v1/classify", b" " + at_limit).status_code == 413


def test_no_content_type_says_the_body_must_be_json(server: ServerProcess) -> None:
    reply = check_answer(
        httpx.post(
            server.url + "/v1/classify",
            content=b"texts=hello",
            headers={**AUTH, "content-type": "application/x-www-form-urlencoded"},
        )
    )
    assert reply.status_code == 422 and "JSON" in reply.json()["error"]


@pytest.mark.parametrize(
    "header,body,headers",
    [
        ({"inputs": [{**V2_TEXT, "data": ["a", "b"]}]}, b"", {}),  # shape says 1, data has 2
        ({"inputs": [{**V2_TEXT, "shape": [-1], "data": ["a"]}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "shape": [2**62, 2**62], "data": ["a"]}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "datatype": "FP32", "data": [1.0]}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "datatype": "NOPE", "data": ["a"]}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "data": [1]}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "data": ["a"]}, {**V2_TEXT, "data": ["b"]}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "name": "other", "data": ["a"]}]}, b"", {}),
        ({"inputs": []}, b"", {}),
        ({"inputs": "text"}, b"", {}),
        ({"inputs": [{**V2_TEXT, "parameters": {"binary_data_size": 99}}]}, b"\x01\x00", {}),
        ({"inputs": [{**V2_TEXT, "parameters": {"binary_data_size": 8}}]}, b"\xff" * 8, {}),
        ({"inputs": [{**V2_TEXT, "parameters": {"binary_data_size": -1}}]}, b"", {}),
        ({"inputs": [{**V2_TEXT, "data": ["a"]}]}, b"junk", {}),
    ],
)
def test_v2_tensor_abuse_is_4xx(
    http: httpx.Client, header: dict[str, Any], body: bytes, headers: dict[str, str]
) -> None:
    head = json.dumps(header).encode()
    length = {"inference-header-content-length": str(len(head))} if body else {}
    for model in ("sentiment", "nli", "translator"):
        reply = post_raw(http, f"/v2/models/{model}/infer", head + body, **length, **headers)
        assert 400 <= reply.status_code < 500


@pytest.mark.parametrize("length", ["-1", "abc", "0", "999999999", "1e3", ""])
def test_v2_binary_header_length_abuse_is_4xx(http: httpx.Client, length: str) -> None:
    head = json.dumps({"inputs": [{**V2_TEXT, "data": ["a"]}]}).encode()
    reply = post_raw(
        http, "/v2/models/sentiment/infer", head, **{"inference-header-content-length": length}
    )
    assert 400 <= reply.status_code < 500


def test_compressed_bombs_are_refused(http: httpx.Client) -> None:
    import gzip

    bomb = gzip.compress(b" " * 10_000_000)
    reply = post_raw(http, "/v2/models/sentiment/infer", bomb, **{"content-encoding": "gzip"})
    assert reply.status_code == 413
    reply = post_raw(
        http, "/v2/models/sentiment/infer", b"not gzip", **{"content-encoding": "gzip"}
    )
    assert 400 <= reply.status_code < 500


# ----------------------------------------------------------------------- API keys


def test_every_guarded_route_answers_401_before_reading_the_body(server: ServerProcess) -> None:
    """Every route of the OpenAPI schema under /v1 and /v2/models: no key, a wrong key, and a
    body that would be a 4xx if parsed (malformed, deeply nested) all answer 401."""
    schema = httpx.get(server.url + "/openapi.json").json()
    guarded = [
        (method.upper(), re.sub(r"\{[^}]+\}", "sentiment", path))
        for path, operations in schema["paths"].items()
        for method in operations
        if path.startswith(("/v1/", "/v2/models"))
    ]
    assert len(guarded) >= 8, guarded
    bodies = [b"{not json", b"[" * 50_000 + b"]" * 50_000, b"x" * 70_000]
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for method, path in guarded:
            for auth in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": KEY}):
                for body in bodies:
                    reply = check_answer(
                        anonymous.request(method, path, content=body, headers=auth)
                    )
                    assert reply.status_code == 401, (method, path, auth, reply.text[:200])
                    assert reply.headers["www-authenticate"] == "Bearer"
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/v2", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_health_probes_answer_head(server: ServerProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        reply = httpx.head(server.url + path)
        assert reply.status_code == 200 and reply.content == b"", path


# ----------------------------------------------------------------------- bodies over the limit


def test_bodies_over_the_limit_get_their_413(server: ServerProcess) -> None:
    """With and without Content-Length, the client reads the 413 (no reset), and a fresh
    request afterwards is served."""
    big = b'{"texts": ["' + b"a" * 5_000_000 + b'"]}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65_536):
            yield big[i : i + 65_536]

    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
        for content in (big, chunks()):
            reply = check_answer(http.post("/v1/classify", content=content))
            assert reply.status_code == 413, reply.text[:200]
            assert "max_body_bytes" in reply.json()["error"]
            assert reply.headers["connection"] == "close"
            assert http.post("/v1/classify", json={"texts": ["ok"]}).status_code == 200


# ----------------------------------------------------------------------- server errors


def test_an_internal_error_keeps_request_id_and_connection(
    service_settings: Callable[..., Any],
) -> None:
    """A bug in a route (a route added here that raises) answers a JSON 500 carrying the request
    id, and the same kept-alive connection serves the next request."""
    import uvicorn

    from service.app import create_app
    from tests.conftest import free_port

    app = create_app(service_settings())

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/boom", boom, methods=["GET"])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        connections = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 30
            while not uv.started and time.monotonic() < deadline:
                time.sleep(0.05)
            for _ in range(3):
                reply = http.get("/v1/boom", headers={"X-Request-ID": "boom-1"})
                assert reply.status_code == 500 and reply.headers["x-request-id"] == "boom-1"
                assert reply.json()["error"].startswith("internal server error")
                assert not LEAKS.search(reply.json()["error"])
                assert reply.headers.get("connection") != "close"
                connections.append(len(uv.server_state.connections))
                assert http.get("/v2/health/live").status_code == 200
        assert connections == [1, 1, 1]  # one connection, kept alive throughout
    finally:
        uv.should_exit = True
        thread.join(30)


# ----------------------------------------------------------------------- slow and idle clients


def test_silent_and_slow_clients_are_cut_off(server: ServerProcess) -> None:
    """A socket that sends nothing is closed after header_timeout_s; one that stops mid-headers
    gets 408; an 8 MB header gets 431; meanwhile normal requests are served."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    reply = httpx.post(server.url + "/v1/classify", json={"texts": ["served"]}, headers=AUTH)
    assert reply.status_code == 200
    time.sleep(LIMITS["header_timeout_s"] + 1)
    for sock in silent:
        sock.settimeout(5)
        assert sock.recv(1024) == b""  # closed by the server
        sock.close()
    slow.settimeout(5)
    answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    slow.close()
    with socket.create_connection(("127.0.0.1", server.port)) as huge:
        huge.settimeout(10)
        huge.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(128):  # 8 MB, or until the server answered and closed
                huge.sendall(b"a" * 65_536)
        answer = huge.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431"), answer


def test_connection_cap_refuses_cleanly(server: ServerProcess) -> None:
    """Past max_connections a new connection gets 503 and is closed; below it, service goes on."""
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(48)]
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.settimeout(5)
            answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"max_connections" in answer
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    reply = httpx.post(server.url + "/v1/classify", json={"texts": ["back"]}, headers=AUTH)
    assert reply.status_code == 200


# ----------------------------------------------------------------------- broken models


def test_a_failed_model_is_503_naming_it(
    repository: Path,
    tmp_path: Path,
    launch_server: Callable[..., ServerProcess],
) -> None:
    """When the only model of a task failed to load, a request that leaves out `model` gets 503
    naming the model and its state, not 404."""
    target = tmp_path / "repository"
    shutil.copytree(repository, target, ignore=shutil.ignore_patterns("nli"))
    broken = clone_model(repository, "nli", "pairs")
    shutil.move(str(broken), target / "pairs")
    with (target / "pairs" / "1" / "model.onnx").open("ab") as f:
        f.write(b"\x00")  # checksum mismatch
    server = launch_server(target)
    pairs = [{"premise": "a", "hypothesis": "b"}]
    reply = check_answer(httpx.post(server.url + "/v1/nli", json={"pairs": pairs}), True)
    assert reply.status_code == 503
    assert "'pairs'" in reply.json()["error"] and "failed" in reply.json()["error"]
    assert server.stop() == 0


# ----------------------------------------------------------------------- overload and SIGTERM


def test_overload_with_a_deadline_is_refused_up_front(
    copy_repository: Callable[..., Path], launch_server: Callable[..., ServerProcess]
) -> None:
    """Far past capacity with a short deadline: no 5xx (no 504 for accepted work), every 429
    carries Retry-After, and the server is ready right after the burst."""
    server = launch_server(
        copy_repository("sentiment"),
        request_timeout_s=2,
        max_queue_size=100_000,
        max_items_per_request=32,
        max_text_chars=2000,
    )
    text = "an unusually long review that goes on and on about the film " * 4
    statuses: list[int] = []

    async def burst() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:

            async def one() -> None:
                for _ in range(6):
                    reply = await http.post("/v1/classify", json={"texts": [text] * 16})
                    check_answer(reply)
                    statuses.append(reply.status_code)
                    if reply.status_code == 429:
                        assert int(reply.headers["retry-after"]) >= 1

            await asyncio.gather(*(one() for _ in range(64)))

    asyncio.run(burst())
    assert all(s in (200, 429, 504) for s in statuses), statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0, statuses
    # The promise is 0 (reports/reliability.md measures it). The admission estimate is a moving
    # average of the machine's recent speed, so a test sharing 2 cores with its own load
    # generator allows a stray 504; before admission predicted waits, 20-38 of about 74
    # accepted requests got one in issue 11's overload run.
    accepted = statuses.count(200) + statuses.count(504)
    assert statuses.count(504) <= max(1, accepted // 100), (statuses.count(504), accepted)
    assert httpx.get(server.url + "/v2/health/ready", timeout=1).status_code == 200
    assert server.stop() == 0


def test_in_flight_cap_refuses_before_reading_the_body(
    copy_repository: Callable[..., Path], launch_server: Callable[..., ServerProcess]
) -> None:
    """With max_in_flight 1 and one request held in flight (its body half sent), the next
    inference request is refused with 429 + Retry-After before its body is parsed (malformed
    JSON gets 429, not 422), health stays open, and the cap frees once the first is answered."""
    server = launch_server(copy_repository("sentiment"), max_in_flight=1)
    body = json.dumps({"texts": ["held in flight"]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as held:
        held.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        with httpx.Client(base_url=server.url, timeout=10) as h:
            deadline = time.monotonic() + 10
            while (reply := post_raw(h, "/v1/classify", b"{not json")).status_code != 429:
                assert reply.status_code == 422  # the held request has not reached the app yet
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert int(reply.headers["retry-after"]) >= 1
            assert "in flight" in reply.json()["error"]
            assert h.get("/v2/health/ready").status_code == 200  # not an inference route
            held.sendall(body[5:])
            assert held.recv(65536).startswith(b"HTTP/1.1 200")
            assert post_raw(h, "/v1/classify", body).status_code == 200
            metrics = h.get("/metrics").text
    assert 'nlpserve_rejected_requests_total{model="",reason="in_flight_cap"}' in metrics
    assert server.stop() == 0


# A socket some earlier test's objects left for the garbage collector may be finalised while
# these threads run; that warning is not about this server.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigterm_under_keep_alive_load_loses_nothing(
    copy_repository: Callable[..., Path], launch_server: Callable[..., ServerProcess]
) -> None:
    """32 clients on kept-alive connections; SIGTERM. Every request gets 200, or 503 with
    Connection: close, or finds the port closed (connect refused); none is dropped after the
    server saw it; the process exits 0."""
    server = launch_server(copy_repository("sentiment"), max_queue_delay_ms=5)
    outcomes: list[tuple[str, str]] = []  # (status or error name, request id)
    lock = threading.Lock()
    counter = itertools.count()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as h:  # keep-alive
            while not stop.is_set():
                request_id = f"ka-{next(counter)}"
                try:
                    reply = h.post(
                        "/v1/classify", json={"texts": ["x"]}, headers={"X-Request-ID": request_id}
                    )
                    status = str(reply.status_code)
                    if status == "503":
                        assert reply.headers.get("connection") == "close", reply.headers
                except httpx.ConnectError:
                    status = "refused"
                except httpx.TransportError as e:
                    status = type(e).__name__
                with lock:
                    outcomes.append((status, request_id))
                if status == "refused":
                    return

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    while sum(o[0] == "200" for o in outcomes) < 200:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    stop.set()
    for t in threads:
        t.join(30)
    logged = {r["request_id"]: r["status"] for r in server.log_records() if "request_id" in r}
    lost = [(s, i) for s, i in outcomes if s not in ("200", "503", "refused")]
    seen_lost = [(s, i) for s, i in lost if i in logged]
    assert not seen_lost, seen_lost  # the server saw these and the client got no answer
    for status, request_id in outcomes:
        if status in ("200", "503"):
            assert logged[request_id] == int(status)
    assert not lost, lost
