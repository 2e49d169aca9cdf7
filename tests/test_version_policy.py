"""Version policies and the repository reader that applies them; the statistics record."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.batcher import RunStats
from service.repository import VersionPolicy, read_model_versions
from service.stats import ModelStatistics, RequestTiming


@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        ({"latest": 1}, [5]),
        ({"latest": 2}, [3, 5]),
        ({"latest": 9}, [1, 3, 5]),
        ({"specific": [1, 5, 7]}, [1, 5]),
    ],
)
def test_policy_selects_versions(policy: dict[str, object], selected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([1, 3, 5]) == selected


@pytest.mark.parametrize("policy", [{}, {"latest": 1, "specific": [1]}, {"specific": [0]}])
def test_policy_needs_exactly_one_valid_kind(policy: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VersionPolicy.model_validate(policy)


def test_reader_applies_the_policy_and_reports_broken_versions(
    copy_repository: Callable[..., Path],
) -> None:
    """Every selected version is read; one without a readable manifest is reported by number
    (the others stay servable); a pin overrides the policy."""
    model_dir = copy_repository("sentiment") / "sentiment"
    shutil.copytree(model_dir / "1", model_dir / "2")
    shutil.copytree(model_dir / "1", model_dir / "3")
    (model_dir / "3" / "manifest.json").write_text("{")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "version_policy": {"latest": 2}}))

    found = read_model_versions(model_dir)
    assert [v.version for v in found.versions] == [2]
    assert list(found.broken) == [3] and "manifest.json" in found.broken[3]
    assert found.selected == {2, 3}
    assert (
        found.versions[0].fingerprint == read_model_versions(model_dir, 1).versions[0].fingerprint
    )
    assert [v.version for v in read_model_versions(model_dir, 1).versions] == [1]
    assert read_model_versions(model_dir, 7).problem is not None


def test_statistics_follow_runs_and_requests() -> None:
    stats = ModelStatistics("m", "1")
    stats.on_run(RunStats(4, 40, 48, (0.01,) * 4, 0.5, failed=False))
    stats.on_run(RunStats(4, 40, 48, (0.01,) * 4, 0.25, failed=True))
    stats.on_run(RunStats(1, 10, 10, (0.0,), 0.125, failed=False))
    timing = RequestTiming()
    timing.engine(enqueued=10.0, run_started=10.25, finished=10.75)
    stats.record(timing, ok=True)
    stats.record(RequestTiming(), ok=False)
    doc = stats.as_json()
    assert (doc["inference_count"], doc["execution_count"]) == (5, 3)
    assert doc["inference_stats"]["queue"] == {"count": 1, "ns": 250_000_000}
    assert doc["inference_stats"]["compute_infer"] == {"count": 1, "ns": 500_000_000}
    assert doc["inference_stats"]["fail"]["count"] == 1
    assert [(b["batch_size"], b["compute_infer"]) for b in doc["batch_stats"]] == [
        (1, {"count": 1, "ns": 125_000_000}),
        (4, {"count": 2, "ns": 750_000_000}),
    ]
