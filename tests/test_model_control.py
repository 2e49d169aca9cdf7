"""Model versions and model control: versions side by side under a version policy, the
repository API in explicit mode, and versions that change without a restart in poll mode (a
broken new version keeps the old one serving; a good one takes over under load with no failed
request).

A new version is published the way a writer should: staged under a dot-name, then renamed into
place, so a scan never sees half a version.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from tests.conftest import ServerProcess, free_port

pytestmark = pytest.mark.timeout(180)


def publish_version(model_dir: Path, version: int, source: int = 1) -> Path:
    staging = model_dir / f".staging-{version}"
    shutil.copytree(model_dir / str(source), staging)
    return staging.rename(model_dir / str(version))


def set_version_policy(model_dir: Path, policy: dict[str, Any]) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["version_policy"] = policy
    (model_dir / "config.json").write_text(json.dumps(config))


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def classify(client: Any, **fields: Any) -> Any:
    return client.post("/v1/classify", json={"texts": ["a fine film"], **fields})


def index(client: Any, **headers: str) -> list[dict[str, Any]]:
    response = client.post("/v2/repository/index", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_versions_serve_side_by_side(
    copy_repository: Callable[..., Path], app_client: Callable[..., Any]
) -> None:
    """latest: 2 serves versions 1 and 2; 2 is the default, 1 is reached by version."""
    repository = copy_repository("sentiment")
    publish_version(repository / "sentiment", 2)
    set_version_policy(repository / "sentiment", {"latest": 2})
    with app_client(model_repository=repository) as c:
        assert c.get("/v2/models/sentiment").json()["versions"] == ["1", "2"]
        (listed,) = c.get("/v1/models").json()["models"]
        assert (listed["version"], listed["versions"]) == ("2", ["1", "2"])
        assert classify(c).json()["version"] == "2"
        assert classify(c, version="1").json()["version"] == "1"
        missing = classify(c, version="7")
        assert missing.status_code == 404 and "serving 1, 2" in missing.json()["error"]
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}
        answer = c.post("/v2/models/sentiment/versions/1/infer", json=body)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        stats = c.get("/v2/models/sentiment/stats").json()["model_stats"]
        assert [(s["version"], s["inference_stats"]["success"]["count"]) for s in stats] == [
            ("1", 2),
            ("2", 1),
        ]
        assert c.get("/v2/models/sentiment/versions/1/config").json()["version_policy"] == {
            "latest": {"num_versions": 2}
        }
        assert [e["version"] for e in index(c)] == ["1", "2"]


def test_explicit_mode_loads_and_unloads_with_an_api_key(
    copy_repository: Callable[..., Path], app_client: Callable[..., Any]
) -> None:
    """The repository API over HTTP and gRPC: API keys apply, unload takes the model out of
    service, load brings it back; tritonclient's own load/unload calls work unchanged."""
    repository = copy_repository("sentiment")
    key = {"Authorization": "Bearer control-key-1"}
    metadata = {"authorization": key["Authorization"]}
    settings = {"model_repository": repository, "api_keys": "control-key-1"}
    grpc_port = free_port()
    with app_client(model_control_mode="explicit", grpc_port=grpc_port, **settings) as c:
        assert c.post("/v2/repository/models/sentiment/unload").status_code == 401
        assert c.post("/v2/repository/index").status_code == 401
        assert c.post("/v2/repository/models/sentiment/unload", headers=key).status_code == 200
        assert index(c, **key) == [
            {"name": "sentiment", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]
        assert c.post("/v1/classify", json={"texts": ["x"]}, headers=key).status_code == 404
        assert c.post("/v2/repository/models/sentiment/load", headers=key).status_code == 200
        assert index(c, **key) == [{"name": "sentiment", "version": "1", "state": "READY"}]
        assert c.post("/v1/classify", json={"texts": ["x"]}, headers=key).status_code == 200
        unknown = c.post("/v2/repository/models/nope/load", headers=key)
        assert unknown.status_code == 404 and list(unknown.json()) == ["error"]

        grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        grpc_client.unload_model("sentiment", headers=dict(metadata))
        (entry,) = grpc_client.get_model_repository_index(headers=dict(metadata)).models
        assert (entry.name, entry.state, entry.reason) == ("sentiment", "UNAVAILABLE", "unloaded")
        grpc_client.load_model("sentiment", headers=dict(metadata))
        assert grpc_client.is_model_ready("sentiment", headers=dict(metadata))
        grpc_client.close()
    with app_client(**settings) as c:  # mode none: the repository API refuses changes
        refused = c.post("/v2/repository/models/sentiment/unload", headers=key)
        assert refused.status_code == 400 and "model_control_mode" in refused.json()["error"]


def test_tritonclient_http_load_and_unload(
    copy_repository: Callable[..., Path], launch_server: Callable[..., ServerProcess]
) -> None:
    """tritonclient.http against a real uvicorn in explicit mode (it sends unload_dependents)."""
    server = launch_server(copy_repository("sentiment"), model_control_mode="explicit")
    client = thttp.InferenceServerClient(server.address, network_timeout=30)
    client.unload_model("sentiment")
    assert client.get_model_repository_index() == [
        {"name": "sentiment", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    client.load_model("sentiment")
    assert client.is_model_ready("sentiment")
    client.close()


def test_poll_mode_reports_a_broken_version_and_keeps_the_old_one(
    copy_repository: Callable[..., Path], app_client: Callable[..., Any]
) -> None:
    """A new version whose model fails its checksum is reported (index: UNAVAILABLE with the
    reason) while version 1 keeps serving; the next good version takes over and the rest go."""
    repository = copy_repository("sentiment")
    model_dir = repository / "sentiment"
    with app_client(
        model_repository=repository, model_control_mode="poll", repository_poll_secs=0.2
    ) as c:
        broken = publish_version(model_dir, 2)
        with (broken / "model.onnx").open("ab") as f:
            f.write(b"\x00")
        wait_for(  # it shows LOADING first, then fails its checksum
            lambda: any(e.get("version") == "2" and e["state"] == "UNAVAILABLE" for e in index(c))
        )
        entries = {e["version"]: e for e in index(c)}
        assert entries["1"]["state"] == "READY"
        assert entries["2"]["state"] == "UNAVAILABLE" and "sha256" in entries["2"]["reason"]
        assert str(repository) not in entries["2"]["reason"]  # no server paths for clients
        assert classify(c).json()["version"] == "1"

        publish_version(model_dir, 3)
        wait_for(lambda: classify(c).json()["version"] == "3")
        wait_for(lambda: index(c) == [{"name": "sentiment", "version": "3", "state": "READY"}])


def test_hot_swap_under_load_fails_no_request(
    copy_repository: Callable[..., Path], launch_server: Callable[..., ServerProcess]
) -> None:
    """32 clients keep classifying while version 2 is published in poll mode: every request
    succeeds, answers switch to version 2, and version 1 is released."""
    repository = copy_repository("sentiment")
    server = launch_server(repository, model_control_mode="poll", repository_poll_secs=0.3)
    answers: list[tuple[float, int, str]] = []  # (sent at, status, version)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                r = http.post("/v1/classify", json={"texts": ["a fine film", "dull"]})
                version = r.json().get("version", "") if r.status_code == 200 else r.text
                answers.append((sent, r.status_code, version))

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answers) >= 64)
        publish_version(repository / "sentiment", 2)
        wait_for(lambda: any(v == "2" for _, _, v in answers))
        switched = time.monotonic()
        wait_for(lambda: sum(1 for sent, _, _ in answers if sent > switched) >= 64)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [a for a in answers if a[1] != 200]
    assert not failures, failures[:5]
    assert {v for _, _, v in answers} == {"1", "2"}
    # A request sent after the first answer from version 2 resolves the new default.
    assert {v for sent, _, v in answers if sent > switched} == {"2"}
    wait_for(lambda: "version 1 released" in server.log())
    index = httpx.post(server.url + "/v2/repository/index").json()
    assert index == [{"name": "sentiment", "version": "2", "state": "READY"}]
