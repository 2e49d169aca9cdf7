"""loadtests/reliability.py keeps working (its figures are in reports/reliability.md): the
SIGTERM scenario on the tiny models, a few clients, every request accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import reliability

pytestmark = pytest.mark.timeout(120)


def test_sigterm_scenario_accounts_for_every_request(
    model_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = reliability.main(["sigterm", "--repository", str(model_repository), "--clients", "4"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert result["lost"] == 0 and result["exit_code"] == 0
    outcomes = result["outcomes"]
    assert outcomes["refused"] == 4  # each client ends at its first refused connect
    assert outcomes.get("200", 0) > 0
    assert sum(outcomes.values()) == result["sent"]
