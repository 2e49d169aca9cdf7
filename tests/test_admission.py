"""Admission policy alone: the drain-rate estimate and the 429 decision (no queue, no clock)."""

from __future__ import annotations

import pytest

from service.admission import ADMISSION_MARGIN, Admission
from service.errors import ErrorKind, ServiceError


def test_time_between_runs_counts_while_work_waits() -> None:
    """With a backlog, the interval since the previous run finished (engine plus gaps between
    runs) is what a run's tokens cost; an idle interval is not."""
    backlogged, idle = Admission("m", 8192, 1), Admission("m", 8192, 1)
    for admission, backlog in ((backlogged, True), (idle, False)):
        admission.observe_run(now=1.0, run_seconds=0.1, tokens=10, backlog=backlog)
        assert admission.seconds_per_token == pytest.approx(0.01)
        admission.observe_run(now=2.0, run_seconds=0.1, tokens=10, backlog=backlog)
    # 1 s for 10 tokens, weighted 0.5 on the way up; idle: the run's own 0.1 s, no change.
    assert backlogged.seconds_per_token == pytest.approx(0.5 * 0.01 + 0.5 * 0.1)
    assert idle.seconds_per_token == pytest.approx(0.01)


def test_estimate_falls_slowly_and_slots_share_a_run() -> None:
    admission = Admission("m", 8192, 2)
    admission.observe_run(now=1.0, run_seconds=0.2, tokens=10, backlog=False)
    assert admission.seconds_per_token == pytest.approx(0.01)  # 0.2 s / 10 tokens / 2 slots
    admission.observe_run(now=2.0, run_seconds=0.0, tokens=10, backlog=False)
    assert admission.seconds_per_token == pytest.approx(0.009)  # down with weight 0.1


def test_cold_start_takes_one_batch_per_slot() -> None:
    """Before any run was measured, work beyond one full batch per slot is refused."""
    admission = Admission("m", 100, 2)
    admission.check(tokens_ahead=0, tokens=500, timeout_s=1)  # an idle engine takes anything
    admission.check(tokens_ahead=150, tokens=50, timeout_s=1)
    with pytest.raises(ServiceError) as refused:
        admission.check(tokens_ahead=150, tokens=51, timeout_s=1)
    assert refused.value.kind is ErrorKind.OVERLOADED and refused.value.retry_after == 1


def test_refuses_past_the_margin_with_the_drain_time_as_retry_after() -> None:
    admission = Admission("m", 8192, 1)
    admission.seconds_per_token = 0.001
    deadline = 10.0
    fits = int(deadline * ADMISSION_MARGIN / 0.001)
    admission.check(tokens_ahead=fits - 100, tokens=100, timeout_s=deadline)
    with pytest.raises(ServiceError) as refused:
        admission.check(tokens_ahead=fits - 100, tokens=101, timeout_s=deadline)
    assert refused.value.kind is ErrorKind.OVERLOADED
    assert refused.value.retry_after == 5  # the 4,900 tokens ahead: 4.9 s, rounded up
