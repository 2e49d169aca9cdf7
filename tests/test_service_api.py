"""The task API (/v1), limits, errors, auth and readiness, in process (TestClient) over the
tiny exported models of the shared repository."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import clone_model

LONG_TEXT = "a wonderful and moving film " * 60  # ~300 tokens: over max_length 128


@pytest.fixture(scope="module")
def client(app_client: Callable[..., Any]) -> Iterator[TestClient]:
    with app_client() as c:
        yield c


def assert_error(response: Any, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    for needle in needles:
        assert needle in body["error"]
    assert "Traceback" not in response.text
    return body


def test_classify_returns_labels_and_probabilities(client: TestClient) -> None:
    """/v1/classify gives one result per text: the best label, its score, all label scores."""
    r = client.post("/v1/classify", json={"texts": ["A great film.", "Dull.", ""]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["truncated"]) == ("sentiment", "1", [])
    assert len(body["results"]) == 3
    for result in body["results"]:
        assert set(result["scores"]) == {"negative", "positive"}
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["score"] == max(result["scores"].values())
        assert result["scores"][result["label"]] == result["score"]


def test_nli_classifies_pairs(client: TestClient) -> None:
    """/v1/nli gives entailment/neutral/contradiction scores per pair."""
    pairs = [{"premise": "A man plays a guitar.", "hypothesis": "A person makes music."}] * 2
    r = client.post("/v1/nli", json={"pairs": pairs, "model": "nli"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and results[0] == results[1]
    assert set(results[0]["scores"]) == {"entailment", "neutral", "contradiction"}


def test_translate_greedy_and_beam(client: TestClient) -> None:
    """/v1/translate returns one string per text for greedy and beam search."""
    for beam_size in (1, 3):
        r = client.post(
            "/v1/translate",
            json={
                "texts": ["A dog runs.", "Two men talk."],
                "beam_size": beam_size,
                "max_new_tokens": 5,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "translator" and len(body["translations"]) == 2
        assert all(isinstance(t, str) and t for t in body["translations"])


def test_models_lists_every_model(client: TestClient) -> None:
    """/v1/models shows each model's task, version, labels, readiness and provider."""
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"sentiment", "nli", "translator"}
    assert models["nli"]["labels"] == ["entailment", "neutral", "contradiction"]
    assert models["translator"]["task"] == "translation"
    for m in models.values():
        assert m["ready"] and m["state"] == "ready" and m["version"] == "1"
        assert m["provider"] == "CPUExecutionProvider"


def test_truncation_is_reported(client: TestClient) -> None:
    """A text longer than max_length is truncated and its index listed in `truncated`."""
    r = client.post("/v1/classify", json={"texts": ["short", LONG_TEXT]})
    assert r.status_code == 200 and r.json()["truncated"] == [1]


def test_truncation_disabled_refuses_long_texts(app_client: Callable[..., Any]) -> None:
    """With truncate=false a too-long text is a 422 naming max_length."""
    with app_client(truncate=False) as c:
        r = c.post("/v1/classify", json={"texts": ["short", LONG_TEXT]})
    assert_error(r, 422, "input 1", "max_length (128 tokens)")


def test_limits_answer_413_naming_the_limit(app_client: Callable[..., Any]) -> None:
    """Too many items, too long a text, too big a body: 413 with the limit's name."""
    with app_client(max_items_per_request=4, max_text_chars=50, max_body_bytes=2048) as c:
        assert_error(
            c.post("/v1/classify", json={"texts": ["x"] * 5}), 413, "max_items_per_request is 4"
        )
        assert_error(
            c.post("/v1/classify", json={"texts": ["ok", "y" * 51]}),
            413,
            "texts[1] has 51 characters",
            "max_text_chars is 50",
        )
        assert_error(
            c.post("/v1/classify", json={"texts": ["z" * 3000]}), 413, "max_body_bytes (2048"
        )
        chunked = (b'{"texts": ["' + b"q" * 1000 + b'"]}' for _ in range(3))
        r = c.post("/v1/classify", content=chunked, headers={"content-type": "application/json"})
        assert_error(r, 413, "max_body_bytes")


def test_model_may_be_omitted_only_when_unambiguous(
    copy_repository: Callable[..., Path], app_client: Callable[..., Any]
) -> None:
    """With two text-classification models, leaving out `model` is a 422 naming both."""
    repository = copy_repository("sentiment")
    clone_model(repository, "sentiment", "reviews")
    with app_client(model_repository=repository) as c:
        assert_error(
            c.post("/v1/classify", json={"texts": ["x"]}), 422, "reviews, sentiment", "'model'"
        )
        ok = c.post("/v1/classify", json={"texts": ["x"], "model": "reviews"})
        assert ok.status_code == 200 and ok.json()["model"] == "reviews"


def test_wrong_task_for_model_is_422(client: TestClient) -> None:
    """Naming a model of another task says which task it serves."""
    r = client.post("/v1/classify", json={"texts": ["x"], "model": "translator"})
    assert_error(r, 422, "serves translation")


@pytest.mark.parametrize(
    "name", ["nope", "../sentiment", "sentiment\x00", "ünïcode/模型", "x" * 5000, " ", "%2F"]
)
def test_unknown_model_is_404_whatever_its_name(client: TestClient, name: str) -> None:
    """Any unknown model name, however odd, is a plain 404 (task API and V2 alike)."""
    assert_error(client.post("/v1/classify", json={"texts": ["x"], "model": name}), 404, "unknown")
    assert client.get("/v2/models/" + name.replace("\x00", "%00")).status_code == 404


BAD_INPUTS: list[tuple[str, str, dict[str, Any]]] = [
    ("empty texts", "/v1/classify", {"json": {"texts": []}}),
    ("texts not a list", "/v1/classify", {"json": {"texts": "hello"}}),
    ("number in texts", "/v1/classify", {"json": {"texts": ["ok", 3]}}),
    ("null text", "/v1/classify", {"json": {"texts": [None]}}),
    ("missing texts", "/v1/classify", {"json": {"model": "sentiment"}}),
    ("unknown field", "/v1/classify", {"json": {"texts": ["x"], "temperature": 1}}),
    ("body is a list", "/v1/classify", {"json": [["x"]]}),
    ("body is null", "/v1/classify", {"json": None}),
    (
        "malformed JSON",
        "/v1/classify",
        {"content": b'{"texts": ["x"', "headers": {"content-type": "application/json"}},
    ),
    (
        "not UTF-8",
        "/v1/classify",
        {"content": b'{"texts": ["\xff\xfe"]}', "headers": {"content-type": "application/json"}},
    ),
    ("no content type", "/v1/classify", {"content": b'{"texts": ["x"]}'}),
    ("too many items", "/v1/classify", {"json": {"texts": ["x"] * 65}}),
    ("huge text", "/v1/classify", {"json": {"texts": ["x" * 10_001]}}),
    ("model not a string", "/v1/classify", {"json": {"texts": ["x"], "model": 1}}),
    ("empty pairs", "/v1/nli", {"json": {"pairs": []}}),
    ("pair missing hypothesis", "/v1/nli", {"json": {"pairs": [{"premise": "x"}]}}),
    ("pair as list", "/v1/nli", {"json": {"pairs": [["a", "b"]]}}),
    ("texts to nli", "/v1/nli", {"json": {"texts": ["x"]}}),
    ("beam_size 0", "/v1/translate", {"json": {"texts": ["x"], "beam_size": 0}}),
    ("beam_size 17", "/v1/translate", {"json": {"texts": ["x"], "beam_size": 17}}),
    ("beam_size string", "/v1/translate", {"json": {"texts": ["x"], "beam_size": "4"}}),
    ("beam_size float", "/v1/translate", {"json": {"texts": ["x"], "beam_size": 2.5}}),
    ("max_new_tokens 0", "/v1/translate", {"json": {"texts": ["x"], "max_new_tokens": 0}}),
    ("max_new_tokens huge", "/v1/translate", {"json": {"texts": ["x"], "max_new_tokens": 10**9}}),
]


@pytest.mark.parametrize(
    ("case", "path", "request_kwargs"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_a_4xx_with_a_message(
    client: TestClient, case: str, path: str, request_kwargs: dict[str, Any]
) -> None:
    """Every malformed or out-of-limit request gets a 4xx with a readable message, never a 5xx."""
    r = client.post(path, **request_kwargs)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    assert r.json()["error"] and "Traceback" not in r.text


def test_wrong_method_and_route_are_json_errors(client: TestClient) -> None:
    """Unknown routes (404) and wrong methods (405) answer in the same error shape."""
    assert_error(client.get("/v1/classify"), 405)
    assert_error(client.get("/v1/nothing-here"), 404)


def test_api_keys_guard_inference_but_not_health(app_client: Callable[..., Any]) -> None:
    """With API keys set, inference and model routes need `Authorization: Bearer <key>`;
    health and metrics stay open."""
    with app_client(api_keys="secret-key-1,secret-key-2") as c:
        body = {"texts": ["x"]}
        r = c.post("/v1/classify", json=body)
        assert_error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer secret-key-3"}
        assert c.post("/v1/classify", json=body, headers=wrong).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v2/models/sentiment").status_code == 401
        right = {"Authorization": "Bearer secret-key-2"}
        assert c.post("/v1/classify", json=body, headers=right).status_code == 200
        assert c.get("/v2/models/sentiment", headers=right).status_code == 200
        for open_path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/v2"):
            assert c.get(open_path).status_code == 200, open_path


def test_draining_refuses_new_work_and_turns_unready(client: TestClient) -> None:
    """Once draining starts, readiness is 503 and new inference is 503 (liveness stays 200)."""
    lifecycle = client.app.state.nlpserve.lifecycle  # type: ignore[attr-defined]
    lifecycle.start_draining()
    try:
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200
        assert_error(client.post("/v1/classify", json={"texts": ["x"]}), 503, "shutting down")
    finally:
        lifecycle.draining = False


def test_deadline_spent_before_queueing_answers_429(app_client: Callable[..., Any]) -> None:
    """A request whose request_timeout_s is spent before it reaches the queue was never
    accepted: 429 with Retry-After naming the setting (not a 504), and the server goes on
    answering. Expiry in the queue and in the engine is covered by the batcher's fake-clock
    tests; admission by predicted wait by test_batcher and test_adversarial."""
    with app_client(request_timeout_s=1e-9) as c:
        for _ in range(3):
            reply = c.post("/v1/classify", json={"texts": ["x"]})
            assert_error(reply, 429, "request_timeout_s")
            assert int(reply.headers["retry-after"]) >= 1
        assert_error(c.post("/v1/nli", json={"pairs": [{"premise": "a", "hypothesis": "b"}]}),
                     429, "request_timeout_s")  # fmt: skip
        assert c.get("/v2/health/live").status_code == 200


def test_metrics_observe_requests_and_batches(client: TestClient) -> None:
    """/metrics exposes request latency by route/model/status and the batcher's histograms."""
    client.post("/v1/classify", json={"texts": ["one", "two"]})
    text = client.get("/metrics").text
    assert (
        'nlpserve_request_duration_seconds_count{model="sentiment",route="/v1/classify",'
        'status="200"}' in text
    )
    for name in (
        "nlpserve_batch_size_count",
        "nlpserve_batch_tokens_bucket",
        "nlpserve_padding_efficiency_bucket",
        "nlpserve_queue_wait_seconds_count",
        "nlpserve_inference_seconds_count",
        'nlpserve_queue_depth{model="sentiment"}',
        'nlpserve_model_ready{model="nli"} 1.0',
    ):
        assert name in text, name


def test_openapi_documents_the_typed_schemas(client: TestClient) -> None:
    """The OpenAPI document has the request/response schemas of every route."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in (
        "ClassifyRequest",
        "NliRequest",
        "TranslateRequest",
        "ClassifyResponse",
        "TranslateResponse",
        "ModelsResponse",
        "V2ModelMetadata",
        "ErrorResponse",
    ):
        assert name in schemas, name
    assert "/v2/models/{name}/infer" in spec["paths"]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="this onnxruntime can use CUDA",
)
def test_providers_cuda_without_cuda_fails_clearly(
    app_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """providers=cuda on a CPU-only onnxruntime: every model fails to load with the reason in
    the log, and the server never reports ready (no silent CPU fallback)."""
    with app_client(wait=False, providers="cuda") as c:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = {m["state"] for m in c.get("/v1/models").json()["models"]}
            if states == {"failed"}:
                break
            time.sleep(0.02)
        assert states == {"failed"}
        assert c.get("/v2/health/ready").status_code == 503
    assert any("providers=cuda but" in r.getMessage() for r in caplog.records)
