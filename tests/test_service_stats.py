"""GET /v1/stats (the live numbers computed from the service's own metrics), the playground's
files at GET /, and the X-Batch-Size header the page shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.live_stats import Histo, LiveStats
from service.metrics import ServiceMetrics


@pytest.fixture(scope="module")
def client(app_client: Callable[..., Any]) -> Iterator[TestClient]:
    with app_client(api_keys="stats-test-key") as c:
        yield c


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    """Ten observations, six at or under 0.1 and all under 0.5: p50 lies inside the first
    bucket, p95 inside the second, linearly; an empty window has no quantile."""
    histo = Histo({0.1: 6, 0.5: 10, float("inf"): 10}, count=10, total=2.0)
    assert histo.quantile(0.5) == pytest.approx(0.1 * 5 / 6)
    assert histo.quantile(0.95) == pytest.approx(0.1 + 0.4 * (9.5 - 6) / 4)
    assert histo.mean() == pytest.approx(0.2)
    assert Histo().quantile(0.5) is None and Histo().mean() is None
    overflow = Histo({0.1: 0, float("inf"): 4}, count=4, total=8.0)
    assert overflow.quantile(0.5) == 0.1  # in +Inf: the largest finite bound, as Prometheus


def test_rates_cover_the_last_window_only() -> None:
    """Requests counted before the window started do not count in requests_per_s."""
    metrics, clock = ServiceMetrics(), FakeClock()
    live = LiveStats(metrics, window_s=10.0, clock=clock)
    latency = metrics.request_seconds.labels("/v1/classify", "sentiment", "200")
    for _ in range(50):
        latency.observe(0.02)
    clock.now += 10.0
    first = live.summary([("sentiment", 3)])["models"]
    assert first[0]["requests_per_s"] == pytest.approx(5.0)  # 50 in the first 10 s
    assert first[0]["queue_depth"] == 3
    for _ in range(10):
        latency.observe(0.2)
    metrics.batch_size.labels("sentiment").observe(4)
    metrics.padding_efficiency.labels("sentiment").observe(0.5)
    clock.now += 10.0
    second = live.summary([("sentiment", 0)])
    (row,) = second["models"]
    assert second["window_s"] == pytest.approx(10.0)
    assert row["requests_per_s"] == pytest.approx(1.0)  # only the 10 of the last 10 s
    assert 100 < row["latency_p50_ms"] <= 250  # the slow ones, not the earlier fast ones
    assert row["batch_size_mean"] == 4 and row["padding_efficiency_mean"] == 0.5


def test_a_step_scheduled_translator_reports_rows_per_step_and_no_padding() -> None:
    """A translator decoded step by step: its batch size is the mean decoder rows per step
    (the scheduler's metrics, not the batcher's), its padding efficiency null (not applicable)
    and its scheduling "step"; a batched model keeps the batcher's numbers."""
    metrics, clock = ServiceMetrics(), FakeClock()
    live = LiveStats(metrics, window_s=10.0, clock=clock)
    for rows in (2, 4, 6):
        metrics.decode.running.labels("translator").observe(rows)
    metrics.batch_size.labels("sentiment").observe(3)
    metrics.padding_efficiency.labels("sentiment").observe(0.75)
    clock.now += 1.0
    summary = live.summary([("translator", 1), ("sentiment", 0)], step_scheduled=["translator"])
    rows = {row["model"]: row for row in summary["models"]}
    translator, sentiment = rows["translator"], rows["sentiment"]
    assert translator["scheduling"] == "step"
    assert translator["batch_size_mean"] == 4
    assert translator["padding_efficiency_mean"] is None
    assert sentiment["scheduling"] == "request"
    assert sentiment["batch_size_mean"] == 3 and sentiment["padding_efficiency_mean"] == 0.75


def test_stats_endpoint_shows_the_translators_rows_per_step(client: TestClient) -> None:
    """After a translation, /v1/stats gives the step-scheduled translator a batch size (rows
    per decode step) and a null padding efficiency."""
    headers = {"authorization": "Bearer stats-test-key"}
    body = {"texts": ["A dog runs.", "A cat sleeps."], "max_new_tokens": 4}
    assert client.post("/v1/translate", json=body, headers=headers).status_code == 200
    stats = client.get("/v1/stats", headers=headers).json()
    (translator,) = [row for row in stats["models"] if row["model"] == "translator"]
    assert translator["batch_size_mean"] >= 1
    assert translator["padding_efficiency_mean"] is None
    assert translator["scheduling"] == "step"


def test_stats_endpoint_reports_served_models(client: TestClient) -> None:
    """/v1/stats lists every model and counts the requests it saw; it needs the key, like
    every /v1 route."""
    headers = {"authorization": "Bearer stats-test-key"}
    reply = client.post("/v1/classify", json={"texts": ["good", "bad"]}, headers=headers)
    assert reply.status_code == 200
    assert reply.headers["x-batch-size"] == "2"
    assert client.get("/v1/stats").status_code == 401
    stats = client.get("/v1/stats", headers=headers).json()
    rows = {row["model"]: row for row in stats["models"]}
    assert set(rows) == {"sentiment", "nli", "translator"}
    assert rows["sentiment"]["requests_per_s"] > 0
    assert rows["sentiment"]["batch_size_mean"] == 2
    assert rows["nli"]["latency_p50_ms"] is None  # no requests yet: no number, not 0


def test_playground_files_are_served(client: TestClient) -> None:
    """GET / is the page; its script and stylesheet come from the package; nothing else does."""
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/playground/app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside
    script = client.get("/playground/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/v1/stats" in script.text
    assert client.get("/playground/style.css").status_code == 200
    for name in ("index.html", "missing.js", "..%2Fapp.py"):
        assert client.get(f"/playground/{name}").status_code == 404
