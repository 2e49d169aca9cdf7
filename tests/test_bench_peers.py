"""The serving benchmark's peers (BentoML, Ray Serve): their command lines, the label-agreement
check, the peer table and goals, and each peer really serving the tiny model in its own venv
(skipped only where `make peers` has not installed that venv)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from loadtests import bench_servers, bench_serving
from loadtests.bench_peers import peer_goals, peer_table
from loadtests.bench_report import BenchResult, Point, ServerRun
from loadtests.payloads import load_payloads
from loadtests.peers import PEERS, PROJECT_ROOT, label_agreement, probe_labels
from loadtests.servers import running_server
from loadtests.stats import EndpointStats
from service.repository import read_model
from service.schemas import ClassifyResponse

# Where `make peers` put the venvs (the Makefile's PEER_VENVS).
PEER_VENVS = Path(os.environ.get("PEER_VENVS", Path(__file__).resolve().parents[1] / ".venv-peers"))


def _fake_venvs(root: Path, *names: str) -> Path:
    for name in names:
        (root / name / "bin").mkdir(parents=True)
        (root / name / "bin" / "python").touch()
        (root / name / ".installed").touch()
    return root


def test_peer_commands_run_each_venv_on_the_served_version_with_nlpserve_settings(
    model_repository: Path, tmp_path: Path
) -> None:
    """Each peer starts with its own venv's python, on the version nlpserve serves, with the
    same ORT threads and max batch size, finding this repository through PYTHONPATH."""
    venvs = _fake_venvs(tmp_path / "venvs", "bentoml", "ray")
    config = bench_serving.BenchConfig(
        model_repository, servers=("batching", "bentoml", "ray"), peer_venvs=venvs, threads=3,
        work_dir=tmp_path / "work",
    )  # fmt: skip
    served = read_model(model_repository / "sentiment")
    specs = bench_serving.server_specs(config, [served], Path("unused"))
    peers = {s.key: s for s in specs if s.kind == "peer"}
    assert list(peers) == ["peer-bentoml", "peer-ray"]
    for name, spec in (("bentoml", peers["peer-bentoml"]), ("ray", peers["peer-ray"])):
        assert spec.command[:3] == [str(venvs / name / "bin" / "python"), "-m", PEERS[name].module]
        args = dict(zip(spec.command[3::2], spec.command[4::2], strict=True))
        assert args["--version"] == str(served.version) and args["--threads"] == "3"
        assert args["--max-batch-size"] == str(served.config.batching.max_batch_size)
        assert (
            Path(args["--repository"], "sentiment").resolve()
            == (model_repository / "sentiment").resolve()
        )
        assert spec.env == {"PYTHONPATH": str(PROJECT_ROOT)}
        assert spec.ready_path == PEERS[name].ready_path and not spec.nlpserve
    # Without --peer-venvs no peer runs; with a venv missing the benchmark stops and says why.
    no_peers = bench_serving.BenchConfig(model_repository, work_dir=tmp_path / "work")
    assert all(s.kind != "peer" for s in bench_serving.server_specs(no_peers, [served], Path()))
    (venvs / "ray" / ".installed").unlink()
    with pytest.raises(bench_serving.BenchError, match="make peers"):
        bench_serving.server_specs(config, [served], Path("unused"))


def test_label_agreement_counts_matching_labels_and_refuses_unequal_lists() -> None:
    assert label_agreement(["a", "b", "a", "a"], ["a", "b", "b", "a"]) == 0.75
    with pytest.raises(ValueError, match="cannot compare"):
        label_agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="cannot compare"):
        label_agreement([], [])


def _point(users: int, rps: float, p95: float, cpu: float = 1.0) -> Point:
    stats = EndpointStats("", "Aggregated", 100, 0, rps, p95 / 2, p95 / 2, p95, p95, p95)
    return Point(users, stats, cpu, 0.2, None, "x.csv")


def test_peer_goals_compare_with_the_best_peer_at_each_user_count() -> None:
    """nlpserve must beat the fastest peer at each user count by 1.5x with a p95 no higher,
    keep 95% of its 32-user throughput at 64, and every server must label like (a)."""
    a = ServerRun("a", "(a)", "batching", 1, "fp32", [_point(8, 300, 50), _point(32, 400, 90),
                                                       _point(64, 390, 170)])  # fmt: skip
    bento = ServerRun("d", "(d) bento", "peer", 1, "fp32", [_point(8, 190, 60), _point(32, 300, 80),
                                                            _point(64, 200, 300)])  # fmt: skip
    ray = ServerRun("e", "(e) ray", "peer", 1, "fp32", [_point(8, 100, 40), _point(32, 100, 100),
                                                        _point(64, 250, 400, cpu=2.0)])  # fmt: skip
    a.labels, a.label_agreement = ["x"] * 100, 1.0
    ray.labels, ray.label_agreement = ["x"] * 100, 0.98
    result = BenchResult({}, "cmd", {}, [], "ck", {}, [a, bento, ray])
    rows = {goal: (measured, met) for goal, measured, met in peer_goals(result)}
    at8, at32, at64 = (
        rows[f"(a) >= 1.5x the best peer's req/s at {u} users, p95 <= its p95"] for u in (8, 32, 64)
    )
    assert at8 == ("1.58x (d) bento; p95 50 vs 60 ms", True)
    assert at32[1] is False and "1.33x (d) bento" in at32[0]  # too slow, and p95 90 > 80
    assert at64 == ("1.56x (e) ray; p95 170 vs 400 ms", True)  # ray is the best peer at 64
    assert rows["(a) req/s at 64 users >= 95% of that at 32"] == ("98% (390.0 vs 400.0)", True)
    assert rows["(e) ray: same labels as (a) on the probe texts (>= 99%)"][1] is False
    table = "\n".join(peer_table(result))
    # CPU per request: 2 cores busy for 250 req/s = 8 ms of CPU a request.
    assert "| 64 | (e) ray | 250.0 | 200 | 400 | 400 | 0 | 8.0 | 1.56x | 2.35x |" in table


def _peer_venvs_or_skip(peer: str) -> Path:
    if not (PEER_VENVS / peer / ".installed").is_file():
        pytest.skip(f"no {peer} venv under {PEER_VENVS}: `make peers` installs it (~1 min)")
    return PEER_VENVS


@pytest.mark.parametrize("peer", list(PEERS))
def test_peer_serves_nlpserves_route_and_labels(
    peer: str, model_repository: Path, launch_server, tmp_path: Path
) -> None:
    """The peer, started as the benchmark starts it, answers /v1/classify in nlpserve's JSON
    shape with nlpserve's labels (probe texts of mixed length), and 404 for another model."""
    venvs = _peer_venvs_or_skip(peer)
    config = bench_serving.BenchConfig(
        model_repository, servers=(peer,), peer_venvs=venvs, threads=1, work_dir=tmp_path
    )
    served = read_model(model_repository / "sentiment")
    (spec,) = bench_servers.peer_specs(config, model_repository, served)
    texts = load_payloads(None).texts[:24]
    nlpserve = launch_server(model_repository)
    reference = probe_labels(nlpserve.url, "sentiment", texts)
    with running_server(spec.command, spec.env, tmp_path / "peer.log", 120, spec.ready_path) as (
        host,
        _,
    ):
        assert label_agreement(reference, probe_labels(host, "sentiment", texts, chunk=5)) == 1.0
        body = json.dumps({"texts": ["fine", "x " * 400], "model": "sentiment"}).encode()
        request = urllib.request.Request(
            host + "/v1/classify", body, {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = ClassifyResponse.model_validate_json(response.read())
        assert answer.model == "sentiment" and answer.version == str(served.version)
        assert len(answer.results) == 2 and answer.truncated == [1]
        other = json.dumps({"texts": ["fine"], "model": "nope"}).encode()
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(
                urllib.request.Request(
                    host + "/v1/classify", other, {"content-type": "application/json"}
                ),
                timeout=30,
            )
        error.value.close()  # its response holds the connection
        assert error.value.code == 404


def test_benchmark_runs_a_peer_in_the_same_run(model_repository: Path, tmp_path: Path) -> None:
    """bench_serving with --peer-venvs: the peer is measured after nlpserve under the same load,
    labels the probe texts like nlpserve, and gets its rows in the peer table and goals."""
    venvs = _peer_venvs_or_skip("bentoml")
    report = tmp_path / "report.md"
    argv = ["--repository", str(model_repository), "--users", "2", "--run-time", "1s",
            "--servers", "batching", "bentoml", "--peer-venvs", str(venvs), "--threads", "1",
            "--engine-seconds", "0.1", "--data-dir", "bundled", "--work-dir", str(tmp_path / "w"),
            "--engine-json", str(tmp_path / "none.json"), "--report", str(report)]  # fmt: skip
    assert bench_serving.main(argv) == 0
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    runs = {r["kind"]: r for r in results["runs"]}
    assert set(runs) == {"batching", "peer"}
    peer = runs["peer"]
    assert peer["label_agreement"] == 1.0 and len(peer["labels"]) == 64
    assert (
        peer["points"][0]["stats"]["requests"] > 0 and peer["points"][0]["stats"]["failures"] == 0
    )
    text = report.read_text()
    assert "## nlpserve vs. the serving frameworks" in text
    assert "| 2 | (d) BentoML 1.4 adaptive batching |" in text
    assert "the best peer's req/s at 2 users" in text
