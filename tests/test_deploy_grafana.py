"""The Grafana dashboard (deploy/grafana) against a live server: every metric each panel's query
names exists in /metrics (a renamed metric otherwise leaves an empty panel nobody notices), and
the provisioning and compose file wire it to the Prometheus data source it names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROJECT_ROOT

GRAFANA = PROJECT_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "nlpserve.json"

# Suffixes a family's samples carry in the text format, by type (counters lose _total in the
# parser's family name; histograms have buckets, sum and count).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, grouping labels, label matchers or range durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval included
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"(?<![A-Za-z0-9_:])\d[\w.]*", "", expr)  # numbers and durations (5m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(?=\s*(\()?)", expr):
        if match.group(1) is None and match.group(0).lower() not in PROMQL_WORDS:
            names.add(match.group(0))
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(a_seconds_bucket{model!="x"}'
        "[$__rate_interval]))) / on (model) b_total offset 5m"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.fixture(scope="module")
def exposed_names(launch_server: Any, model_repository: Path) -> set[str]:
    """Every sample name a live server exposes (or would, once its labelled children exist)."""
    server = launch_server(model_repository)
    httpx.post(server.url + "/v1/classify", json={"texts": ["a fine film"]}).raise_for_status()
    text = httpx.get(server.url + "/metrics").text
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_dashboard_metric_exists_on_a_live_server(exposed_names: set[str]) -> None:
    queries = panel_queries()
    assert len(queries) >= 15
    missing = {
        f"{title}: {name}"
        for title, expr in queries
        for name in metric_names(expr)
        if name not in exposed_names
    }
    assert not missing, missing


def test_the_issue_panels_are_there() -> None:
    """Rate and errors by route/status, latency quantiles by model, queue, batching, padding,
    rejections, engine time, process CPU and memory."""
    used = {name for _, expr in panel_queries() for name in metric_names(expr)}
    assert {
        "nlpserve_request_duration_seconds_count",
        "nlpserve_request_duration_seconds_bucket",
        "nlpserve_queue_depth",
        "nlpserve_queue_wait_seconds_bucket",
        "nlpserve_batch_size_sum",
        "nlpserve_batch_tokens_sum",
        "nlpserve_padding_efficiency_ratio_sum",
        "nlpserve_rejected_requests_total",
        "nlpserve_inference_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= used
    exprs = " ".join(expr for _, expr in panel_queries())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (model, le)" in exprs


def test_provisioning_wires_the_dashboard_to_prometheus() -> None:
    """The data source uid the panels name is provisioned, pointing at the compose Prometheus;
    compose mounts the provisioning and dashboard folders where the provider looks."""
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert uids == {source["uid"]}
    compose = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose.yaml").read_text())["services"]
    assert source["url"] == "http://prometheus:9090" and "9090" in compose["prometheus"]["ports"][0]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/nlpserve.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{dashboards_path}:ro" in compose["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose["grafana"]["volumes"]
