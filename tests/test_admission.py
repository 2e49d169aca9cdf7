"""Admission policy alone: the drain-rate estimate and the 429 decision (no queue, no clock)."""

from __future__ import annotations

import pytest

from service.admission import ADMISSION_MARGIN, Admission
from service.errors import ErrorKind, ServiceError
from service.shedding import MIN_IN_FLIGHT, RATE_WINDOW_S, InFlightGate, is_inference


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


def test_in_flight_gate_derives_its_cap_from_the_answer_rate() -> None:
    gate = InFlightGate(timeout_s=2.0)
    for _ in range(MIN_IN_FLIGHT):  # nothing measured yet: the floor holds
        assert gate.try_enter(0.0) is None
    assert gate.try_enter(0.0) == 1  # 64 in flight, no rate: 1 s
    for i in range(MIN_IN_FLIGHT):  # 64 answered over the window: 12.8/s, cap stays the floor
        gate.leave(i * 0.05, answered=True)
    assert gate.answer_rate(5.0) == MIN_IN_FLIGHT / RATE_WINDOW_S
    assert gate.limit(5.0) == MIN_IN_FLIGHT

    busy = InFlightGate(timeout_s=2.0)
    now = 100.0
    for k in range(int(500 * RATE_WINDOW_S)):  # 500 answers/s over the whole window
        busy.in_flight += 1
        busy.leave(now - RATE_WINDOW_S + k / 500, answered=True)
    assert busy.answer_rate(now) == 500
    assert busy.limit(now) == 500 * 2  # what is answered within the deadline
    busy.in_flight = busy.limit(now)
    assert busy.try_enter(now) == 2  # 1000 in flight at 500/s: two seconds
    busy.leave(now, answered=False)  # refusals and errors do not count toward the rate
    assert busy.answer_rate(now) == 500
    assert busy.try_enter(now) is None


def test_in_flight_gate_fixed_limit_and_routes() -> None:
    gate = InFlightGate(timeout_s=30.0, fixed_limit=2)
    assert gate.try_enter(0.0) is None and gate.try_enter(0.0) is None
    assert gate.try_enter(0.0) == 1
    assert is_inference("POST", "/v1/classify") and is_inference("POST", "/v2/models/m/infer")
    assert is_inference("POST", "/v2/models/m/versions/2/infer")
    assert not is_inference("GET", "/v1/classify")
    assert not is_inference("POST", "/v2/repository/models/m/load")
    assert not is_inference("GET", "/v2/health/ready")
