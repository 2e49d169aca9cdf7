"""Service settings: environment variables, CLI options, cross-field checks, startup messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import build_parser, main
from service.settings import Settings, describe_error


def test_every_option_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NLPSERVE_* variables set the fields; lists and maps are comma-separated."""
    monkeypatch.setenv("NLPSERVE_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("NLPSERVE_PORT", "9001")
    monkeypatch.setenv("NLPSERVE_PROVIDERS", "cpu")
    monkeypatch.setenv("NLPSERVE_TRUNCATE", "false")
    monkeypatch.setenv("NLPSERVE_API_KEYS", "first-key-123, second-key-456")
    monkeypatch.setenv("NLPSERVE_PINNED_VERSIONS", "sentiment=2,nli=1")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.port == 9001 and settings.providers == "cpu" and settings.truncate is False
    assert settings.api_key_values() == [b"first-key-123", b"second-key-456"]
    assert settings.pinned_versions == {"sentiment": 2, "nli": 1}


def test_cli_options_mirror_the_fields() -> None:
    """Every settings field has a --dashed option; booleans get --no-... too."""
    parser = build_parser()
    options = {a.dest for a in parser._actions}
    assert set(Settings.model_fields) <= options
    args = parser.parse_args(["--model-repository", "x", "--no-truncate", "--max-queue-size", "7"])
    assert vars(args) == {"model_repository": "x", "truncate": False, "max_queue_size": "7"}


def test_cross_field_check_names_both_settings(tmp_path: Path) -> None:
    """A queue smaller than one full request is refused with a message naming both limits."""
    with pytest.raises(ValidationError) as error:
        Settings(model_repository=tmp_path, max_queue_size=4, max_items_per_request=8)
    assert "max_queue_size (4) must be at least max_items_per_request (8)" in describe_error(
        error.value
    )


def test_bad_value_stops_startup_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m service` with a bad value exits 2 naming the env var and the option."""
    code = main(["--model-repository", str(tmp_path), "--providers", "tpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid setting NLPSERVE_PROVIDERS (--providers)" in err
    assert "Traceback" not in err


def test_short_api_keys_are_refused(tmp_path: Path) -> None:
    """API keys under 8 characters are refused (they would be guessable)."""
    with pytest.raises(ValidationError, match="at least 8 characters"):
        Settings.model_validate({"model_repository": tmp_path, "api_keys": "abc"})


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, a 2-CPU limit
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two cores, each partly
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # no limit: the affinity
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({}, None),  # no cgroup files (not in a container, or not Linux)
    ],
)
def test_available_cores_is_capped_by_a_containers_cpu_limit(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    """A pod's CPU limit is a cgroup quota; its affinity still lists every core of the node."""
    import os

    from service.settings import available_cores

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == (min(affinity, expected) if expected else affinity)
