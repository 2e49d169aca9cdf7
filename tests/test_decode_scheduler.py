"""service/decode_scheduler.py: who joins and leaves the running decode batch, with a fake engine.

The fake runner decodes a sequence to `n` copies of token 7, n = its first source id, one token
per step, and records every call's joins, leaves and running rows: the policy is tested alone,
without tensors.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.decode_items import DecodeItem, StepStats
from service.decode_policy import (
    JOIN_GROUP_BUSY_ROWS,
    JOIN_GROUP_MAX_HELD_STEPS,
    DecodePolicy,
    held_back,
)
from service.decode_scheduler import DecodeScheduler
from service.engines.decode_io import Join, Outcome
from service.engines.tokenization import Encoded
from service.engines.translator import DecodingParams
from service.errors import ErrorKind, ServiceError


class FakeRunner:
    """Runs on the scheduler's thread, like DecodeBatch."""

    def __init__(self) -> None:
        self.active: dict[int, tuple[int, int]] = {}  # seq_id -> (length to decode, rows)
        self.done: dict[int, int] = {}
        self.calls: list[tuple[list[int], list[int], int]] = []  # joins, leaves, rows after
        self.fail_next = False
        self.permits: threading.Semaphore | None = None  # when set up, each step takes one
        self.encoded_on: list[str] = []  # the thread each `encode` call ran on

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.active.values())

    def encode(self, joins: list[Join]) -> list[FakeRun]:
        self.encoded_on.append(threading.current_thread().name)
        return [FakeRun(tuple(joins))]

    def step(
        self, joins: list[Join], leaves: list[int], encoded: Sequence[FakeRun] = ()
    ) -> list[Outcome]:
        if self.permits is not None:
            self.permits.acquire()
        for seq_id in leaves:
            self.active.pop(seq_id, None)  # a sequence that left while encoding never joined
        joins = [*(j for run in encoded for j in run.joins), *joins]
        for j in joins:
            self.active[j.seq_id] = (min(j.src_ids[0], j.max_new_tokens), j.beam_size)
            self.done[j.seq_id] = 0
        self.calls.append(
            ([j.seq_id for j in joins], list(leaves), sum(r for _, r in self.active.values()))
        )
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine broke")
        outcomes = []
        for seq_id, (length, beams) in list(self.active.items()):
            self.done[seq_id] += 1
            finished = self.done[seq_id] >= length
            token = 7 if beams == 1 else None
            outcomes.append(Outcome(seq_id, token, [7] * length if finished else None))
            if finished:
                del self.active[seq_id]
        return outcomes

    def reset(self) -> None:
        self.active.clear()


@dataclass(frozen=True)
class FakeRun:
    joins: tuple[Join, ...]

    def without(self, seq_ids: set[int]) -> FakeRun | None:
        kept = tuple(j for j in self.joins if j.seq_id not in seq_ids)
        return FakeRun(kept) if kept else None


async def advance(runner: FakeRunner, steps: int) -> None:
    """Let `steps` more engine steps through and wait until they ran."""
    assert runner.permits is not None
    target = len(runner.calls) + steps
    runner.permits.release(steps)
    while len(runner.calls) < target:
        await asyncio.sleep(0.001)


async def until(condition: Callable[[], object], what: str, within_s: float = 5.0) -> None:
    """Wait for `condition` (on another thread's doing); fail, not hang, if it never holds."""
    give_up = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < give_up, f"never happened: {what}"
        await asyncio.sleep(0.001)


def unleash(runner: FakeRunner) -> None:
    """Every later step runs at once."""
    assert runner.permits is not None
    runner.permits.release(1000)


class Recorder:
    def __init__(self) -> None:
        self.steps: list[StepStats] = []
        self.dropped: dict[str, int] = {}

    def on_step(self, stats: StepStats) -> None:
        self.steps.append(stats)

    def on_dropped(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


def src(length: int, tokens: int = 3) -> Encoded:
    """A source whose fake translation has `length` tokens (and `tokens` source tokens)."""
    return Encoded(ids=[length] + [5] * (tokens - 1), type_ids=[0] * tokens, truncated=False)


GREEDY = DecodingParams(beam_size=1, max_new_tokens=32)


def make(
    clock: Callable[[], float] = time.monotonic,
    encode_ahead: bool = False,
    encode_streams_early: bool = False,
    **policy: int,
) -> tuple[DecodeScheduler, FakeRunner, Recorder]:
    runner, recorder = FakeRunner(), Recorder()
    scheduler = DecodeScheduler(
        "translator",
        runner,
        DecodePolicy(**policy),
        finish=lambda ids: " ".join(map(str, ids)),
        max_steps=lambda n: min(n, 20),  # a positional table of 20
        clock=clock,
        observer=recorder,
        encode_ahead=encode_ahead,
        encode_streams_early=encode_streams_early,
    )
    return scheduler, runner, recorder


def test_short_sequence_leaves_without_waiting_for_the_long_one() -> None:
    """A 2-token and a 9-token sequence start together; the short one is answered after 2
    steps, not 9, and the long one keeps running alone."""

    async def main() -> None:
        scheduler, runner, recorder = make()
        scheduler.start()
        short, long = scheduler.submit([src(2), src(9)], key=GREEDY, timeout_s=10)
        assert await short.future == "7 7"
        assert await long.future == " ".join(["7"] * 9)
        await scheduler.stop(5)
        assert [c[2] for c in runner.calls] == [2, 2] + [1] * 7
        assert sum(s.finished for s in recorder.steps) == 2

    asyncio.run(main())


def test_late_arrival_joins_at_the_next_step_boundary() -> None:
    """A request arriving while a long sequence decodes joins at the next step, not after the
    long one finished, and both decode side by side from then on."""

    async def main() -> None:
        scheduler, runner, _ = make()
        runner.permits = threading.Semaphore(0)
        scheduler.start()
        (long,) = scheduler.submit([src(10)], key=GREEDY, timeout_s=10)
        await advance(runner, 3)  # step 3 is under way (its joins were decided before it)
        (late,) = scheduler.submit([src(2)], key=GREEDY, timeout_s=10)
        unleash(runner)
        await long.future
        await scheduler.stop(5)
        assert late.future.result() == "7 7"
        joined_at = next(i for i, c in enumerate(runner.calls) if late.seq_id in c[0])
        assert joined_at == 4
        assert [c[2] for c in runner.calls[4:6]] == [2, 2]

    asyncio.run(main())


async def late_arrival_with_encode_ahead(
    on_token: Callable[[int], None] | None = None,
) -> tuple[FakeRunner, Recorder, DecodeItem, DecodeItem]:
    """encode_ahead: a 10-token sequence decodes; a 2-token one arrives during step 3 (with
    `on_token`, streamed). -> runner, recorder, the long item, the late one (both answered)."""
    scheduler, runner, recorder = make(encode_ahead=True)
    runner.permits = threading.Semaphore(0)
    scheduler.start()
    (long,) = scheduler.submit([src(10)], key=GREEDY, timeout_s=10)
    await advance(runner, 3)
    (late,) = scheduler.submit([src(2)], key=GREEDY, timeout_s=10, on_token=on_token)
    unleash(runner)
    await long.future
    await scheduler.stop(5)
    return runner, recorder, long, late


def test_encode_ahead_encodes_late_arrivals_beside_the_step_and_joins_them_next() -> None:
    """encode_ahead: a request arriving while a batch decodes is encoded on the encoder's thread
    during a step and joins at the step after; one arriving to an empty batch (nothing to
    overlap) is encoded inline and joins at once."""
    runner, recorder, long, late = asyncio.run(late_arrival_with_encode_ahead())
    assert late.future.result() == "7 7"
    assert runner.calls[0][0] == [long.seq_id]  # inline: the batch was empty
    joined_at = next(i for i, c in enumerate(runner.calls) if late.seq_id in c[0])
    assert joined_at == 5  # admitted at step 4, encoded beside it
    assert runner.encoded_on == ["encode-translator_0"]
    assert sum(s.joined for s in recorder.steps) == 2


def test_a_streamed_sequence_joins_at_once_even_with_encode_ahead() -> None:
    """Its client waits for the first piece: no step of delay for it."""
    pieces: list[int] = []
    runner, _, _, streamed = asyncio.run(late_arrival_with_encode_ahead(pieces.append))
    assert streamed.future.result() == "7 7" and pieces == [7, 7]
    joined_at = next(i for i, c in enumerate(runner.calls) if streamed.seq_id in c[0])
    assert joined_at == 4 and runner.encoded_on == []


def test_a_stream_arriving_during_a_step_is_encoded_beside_it_and_joins_next() -> None:
    """encode_streams_early: a streamed sequence arriving while a step runs is encoded on the
    encoder's thread at once and joins at the next boundary, encoded; one arriving to an empty
    batch is encoded inside the step (nothing to overlap); whole answers are not affected."""

    async def main() -> tuple[FakeRunner, list[DecodeItem], list[int]]:
        scheduler, runner, _ = make(encode_streams_early=True)
        runner.permits = threading.Semaphore(0)
        scheduler.start()
        pieces: list[int] = []
        (first,) = scheduler.submit([src(6)], key=GREEDY, timeout_s=10, on_token=pieces.append)
        await advance(runner, 2)  # step 2 is under way
        (late,) = scheduler.submit([src(2)], key=GREEDY, timeout_s=10, on_token=pieces.append)
        await until(lambda: runner.encoded_on, "encoded before the step it joins began")
        (whole,) = scheduler.submit([src(2)], key=GREEDY, timeout_s=10)
        unleash(runner)
        await asyncio.gather(first.future, late.future, whole.future)
        await scheduler.stop(5)
        return runner, [first, late, whole], pieces

    runner, (first, late, whole), pieces = asyncio.run(main())
    assert runner.calls[0][0] == [first.seq_id]  # an empty batch: encoded inside its step
    assert runner.encoded_on == ["encode-translator_0"]  # the late stream, and it alone
    assert runner.calls[3][0] == [late.seq_id, whole.seq_id]  # joined at the next boundary
    assert late.future.result() == "7 7" and whole.future.result() == "7 7"
    assert pieces.count(7) == 6 + 2


@pytest.mark.parametrize("streamed", [False, True])
def test_a_sequence_that_leaves_while_it_is_encoded_never_joins(streamed: bool) -> None:
    """Encoded ahead (admitted, then encoded beside the next step) or, streamed, encoded early
    (as it arrived): its client leaves meanwhile and it never joins."""

    async def main() -> None:
        scheduler, runner, recorder = make(encode_ahead=not streamed, encode_streams_early=streamed)
        runner.permits = threading.Semaphore(0)
        scheduler.start()
        (long,) = scheduler.submit([src(8)], key=GREEDY, timeout_s=10)
        await advance(runner, 2)
        listener = (lambda _: None) if streamed else None
        (gone,) = scheduler.submit([src(3)], key=GREEDY, timeout_s=10, on_token=listener)
        if not streamed:
            await advance(runner, 1)  # admitted at the next boundary, encoded beside its step
        await until(lambda: runner.encoded_on, "its encoder run handed off")
        gone.future.cancel()
        unleash(runner)
        await long.future
        await scheduler.stop(5)
        assert all(gone.seq_id not in joins for joins, _, _ in runner.calls)
        assert long.future.result() == " ".join(["7"] * 8)
        assert recorder.dropped == {"cancelled": 1}
        assert scheduler.rows == 0

    asyncio.run(main())


def test_running_sequences_are_bounded_and_the_queue_head_waits_its_turn() -> None:
    """With room for 4 rows, a beam-4 sequence waits behind two greedy ones until both left
    (it joins the step after theirs ended); the greedy one submitted after it does not
    overtake it (first come first served)."""

    async def main() -> None:
        scheduler, runner, _ = make(max_running_sequences=4)
        scheduler.start()
        a = scheduler.submit([src(3), src(3)], key=GREEDY, timeout_s=10)
        (beam,) = scheduler.submit(
            [src(2)], key=DecodingParams(beam_size=4, max_new_tokens=32), timeout_s=10
        )
        (c,) = scheduler.submit([src(1)], key=GREEDY, timeout_s=10)
        await asyncio.gather(*(i.future for i in [*a, beam, c]))
        await scheduler.stop(5)
        assert max(rows for _, _, rows in runner.calls) <= 4
        beam_step = next(i for i, call in enumerate(runner.calls) if beam.seq_id in call[0])
        c_step = next(i for i, call in enumerate(runner.calls) if c.seq_id in call[0])
        assert beam_step == 3 and c_step > beam_step  # after a's 3 steps; c after beam

    asyncio.run(main())


def test_cache_token_budget_limits_admission() -> None:
    """Rows x (longest source + most steps) stays within max_cache_tokens: two sequences of 10
    source tokens and 20 steps (60 tokens together) do not run side by side under a budget of
    50, and the reported cache tokens never exceed it."""

    async def main() -> None:
        scheduler, runner, recorder = make(max_cache_tokens=50)
        scheduler.start()
        items = scheduler.submit([src(3, tokens=10), src(3, tokens=10)], key=GREEDY, timeout_s=10)
        await asyncio.gather(*(i.future for i in items))
        await scheduler.stop(5)
        assert max(rows for _, _, rows in runner.calls) == 1
        assert max(s.cache_tokens for s in recorder.steps) == 30

    asyncio.run(main())


def test_a_sequence_that_could_never_fit_is_refused_at_once() -> None:
    """beam_size over max_running_sequences: 422; over the cache budget alone: 413."""

    async def main() -> None:
        scheduler, _, _ = make(max_running_sequences=4, max_cache_tokens=40)
        scheduler.start()
        with pytest.raises(ServiceError) as rows:
            scheduler.submit([src(2)], key=DecodingParams(8, 4), timeout_s=10)
        with pytest.raises(ServiceError) as cache:
            scheduler.submit([src(2, tokens=30)], key=DecodingParams(2, 10), timeout_s=10)
        await scheduler.stop(5)
        assert rows.value.kind is ErrorKind.VALIDATION and "max_running_sequences" in str(
            rows.value
        )
        assert cache.value.kind is ErrorKind.PAYLOAD_TOO_LARGE
        assert "max_cache_tokens" in str(cache.value)

    asyncio.run(main())


def test_full_queue_answers_overloaded_with_retry_after() -> None:
    """Waiting sequences beyond max_queue_size: 429 with a Retry-After, nothing queued."""

    async def main() -> None:
        scheduler, runner, _ = make(max_queue_size=3, max_running_sequences=1)
        runner.permits = threading.Semaphore(0)  # the engine stalls: nothing leaves
        scheduler.start()
        scheduler.submit([src(5)], key=GREEDY, timeout_s=10)
        await asyncio.sleep(0.01)  # the first joined; the queue is empty again
        scheduler.submit([src(5)] * 3, key=GREEDY, timeout_s=10)
        with pytest.raises(ServiceError) as error:
            scheduler.submit([src(5)], key=GREEDY, timeout_s=10)
        assert scheduler.queue_depth == 3
        unleash(runner)
        await scheduler.stop(5)
        assert error.value.kind is ErrorKind.OVERLOADED
        assert error.value.retry_after is not None and error.value.retry_after >= 1

    asyncio.run(main())


def test_cancelled_sequence_frees_its_rows_at_the_next_step() -> None:
    """A client that goes away (its future cancelled) leaves at the next step boundary; the
    other sequence is unaffected."""

    async def main() -> None:
        scheduler, runner, recorder = make()
        runner.permits = threading.Semaphore(0)
        scheduler.start()
        (gone,) = scheduler.submit([src(10)], key=GREEDY, timeout_s=10)
        (stays,) = scheduler.submit([src(6)], key=GREEDY, timeout_s=10)
        await advance(runner, 2)  # step 2 is under way
        gone.future.cancel()
        unleash(runner)
        await stays.future
        await scheduler.stop(5)
        left_at = next(i for i, c in enumerate(runner.calls) if gone.seq_id in c[1])
        assert left_at == 3 and runner.calls[left_at][2] == 1
        assert stays.future.result() == " ".join(["7"] * 6)
        assert recorder.dropped == {"cancelled": 1}

    asyncio.run(main())


def test_deadline_passed_while_decoding_answers_timeout_and_frees_rows() -> None:
    """A running sequence past its deadline gets TIMEOUT at the next step and leaves."""

    async def main() -> None:
        scheduler, runner, recorder = make()
        runner.permits = threading.Semaphore(0)
        scheduler.start()
        (item,) = scheduler.submit([src(10)], key=GREEDY, timeout_s=0.05)
        await advance(runner, 1)
        await asyncio.sleep(0.1)
        unleash(runner)
        with pytest.raises(ServiceError) as error:
            await asyncio.wait_for(item.future, 5)
        await asyncio.sleep(0.01)
        await scheduler.stop(5)
        assert error.value.kind is ErrorKind.TIMEOUT
        assert any(item.seq_id in leaves for _, leaves, _ in runner.calls)
        assert recorder.dropped == {"timeout": 1}

    asyncio.run(main())


def test_greedy_tokens_reach_the_listener_as_they_decode() -> None:
    """on_token sees every token of a greedy sequence, before its final answer."""

    async def main() -> None:
        scheduler, _, _ = make()
        scheduler.start()
        seen: list[int] = []
        (item,) = scheduler.submit([src(4)], key=GREEDY, timeout_s=10, on_token=seen.append)
        assert await item.future == "7 7 7 7"
        await scheduler.stop(5)
        assert seen == [7, 7, 7, 7]

    asyncio.run(main())


def test_a_failed_step_fails_its_sequences_and_the_scheduler_goes_on() -> None:
    """An engine error answers the running sequences with it, resets the batch, and later
    requests decode normally."""

    async def main() -> None:
        scheduler, runner, _ = make()
        runner.fail_next = True
        scheduler.start()
        (broken,) = scheduler.submit([src(3)], key=GREEDY, timeout_s=10)
        with pytest.raises(RuntimeError, match="engine broke"):
            await broken.future
        (fine,) = scheduler.submit([src(2)], key=GREEDY, timeout_s=10)
        assert await fine.future == "7 7"
        await scheduler.stop(5)

    asyncio.run(main())


def test_stop_drains_waiting_and_running_then_refuses() -> None:
    """stop() lets every accepted sequence finish, then submit answers SHUTTING_DOWN."""

    async def main() -> None:
        scheduler, _, _ = make(max_running_sequences=1)
        scheduler.start()
        items = scheduler.submit([src(3), src(2)], key=GREEDY, timeout_s=10)
        await scheduler.stop(5)
        assert [i.future.result() for i in items] == ["7 7 7", "7 7"]
        with pytest.raises(ServiceError) as error:
            scheduler.submit([src(1)], key=GREEDY, timeout_s=10)
        assert error.value.kind is ErrorKind.SHUTTING_DOWN

    asyncio.run(main())


def test_work_that_would_wait_past_its_deadline_is_refused_with_retry_after() -> None:
    """With the measured rate at which rows free up (one 2-step sequence per 0.2 s of steps on
    a fake clock, one row), a request behind 10 waiting sequences would get a place after about
    2.2 s: refused (429) with a 1 s timeout, accepted with a 100 s one."""

    async def main() -> None:
        now = [0.0]
        scheduler, runner, _ = make(clock=lambda: now[0], max_running_sequences=1)
        original = runner.step

        def slow_step(
            joins: list[Join], leaves: list[int], encoded: Sequence[FakeRun] = ()
        ) -> list[Outcome]:
            now[0] += 0.1  # every step takes 0.1 s on the fake clock
            return original(joins, leaves, encoded)

        runner.step = slow_step  # type: ignore[method-assign]
        scheduler.start()
        first = scheduler.submit([src(2)] * 3, key=GREEDY, timeout_s=100)
        await asyncio.gather(*(i.future for i in first))  # measured: 1 row freed per 0.2 s
        runner.permits = threading.Semaphore(0)  # now the engine stalls
        scheduler.submit([src(2)] * 11, key=GREEDY, timeout_s=100)  # 1 joins, 10 wait
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError) as refused:
            scheduler.submit([src(2)], key=GREEDY, timeout_s=1)
        accepted = scheduler.submit([src(2)], key=GREEDY, timeout_s=100)
        unleash(runner)
        await accepted[0].future
        await scheduler.stop(5)
        assert refused.value.kind is ErrorKind.OVERLOADED
        assert "deadline" in refused.value.message and refused.value.retry_after == 2  # 10 ahead

    asyncio.run(main())


def test_translators_are_step_scheduled_unless_told_or_exported_before(
    model_repository: Path,
    service_settings: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The registry schedules a translator step by step by default; translation_batching=request
    or a decoder that cannot mix steps (an older export, logged) keeps request-level batching."""
    from service.engines import SessionSettings, TranslatorEngine
    from service.metrics import ServiceMetrics
    from service.registry import ModelRegistry
    from service.repository import scan

    versions, _ = scan(model_repository, {})
    version = next(v for v in versions if v.name == "translator")
    engine = TranslatorEngine(version, SessionSettings(providers="cpu", allow_spinning=False))
    step = ModelRegistry(service_settings(), ServiceMetrics())
    request = ModelRegistry(service_settings(translation_batching="request"), ServiceMetrics())
    assert step._steps_decoding(engine) and not request._steps_decoding(engine)
    engine.generator.mixed_steps = False
    assert not step._steps_decoding(engine)
    assert "re-export" in caplog.text


@pytest.mark.parametrize(
    ("threads", "lanes", "ahead"), [(1, 1, True), (2, 1, False), (1, 2, False)]
)
def test_the_encoder_runs_beside_the_step_only_when_the_threads_leave_it_a_core(
    model_repository: Path,
    service_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    lanes: int,
    ahead: bool,
) -> None:
    """On 2 cores: a decoder on 1 thread leaves a core for the encoder beside it; on 2 it
    would only take turns with it, so the joiners are encoded inside the step; with two lanes
    each lane encodes its joiners beside the other's step."""
    from service import translator_scheduling
    from service.engines import SessionSettings, TranslatorEngine
    from service.metrics import ServiceMetrics
    from service.repository import scan

    monkeypatch.setattr(translator_scheduling, "available_cores", lambda: 2)
    versions, _ = scan(model_repository, {})
    version = next(v for v in versions if v.name == "translator")
    engine = TranslatorEngine(version, SessionSettings(providers="cpu", allow_spinning=False))
    settings = service_settings(intra_op_threads=threads, decode_lanes=lanes)
    scheduler = translator_scheduling.decode_scheduler(version, engine, settings, ServiceMetrics())
    assert scheduler.encodes_ahead is ahead
    off = service_settings(intra_op_threads=1, decode_lanes=1, decode_encode_ahead=False)
    assert not translator_scheduling.decode_scheduler(
        version, engine, off, ServiceMetrics()
    ).encodes_ahead


@pytest.mark.parametrize(
    ("case", "held_steps"),
    [
        ("lone whole answer", JOIN_GROUP_MAX_HELD_STEPS),  # held as long as allowed, then joins
        ("a group's worth", 0),  # join_group joiners at once: one encoder run, no wait
        ("streamed", 0),  # its client waits for the first piece
        ("join_group 1", 0),
        ("quiet batch", 0),  # fewer than JOIN_GROUP_BUSY_ROWS rows: the cores have time
    ],
)
def test_a_busy_batch_gathers_whole_answer_joiners(case: str, held_steps: int) -> None:
    """A busy batch holds back fewer than `join_group` whole-answer joiners to encode them
    together, for at most JOIN_GROUP_MAX_HELD_STEPS steps; streams, a full group, join_group=1
    and a quiet batch join at the first boundary."""

    async def main() -> None:
        group = 1 if case == "join_group 1" else 4
        scheduler, runner, _ = make(join_group=group)
        runner.permits = threading.Semaphore(0)
        scheduler.start()
        running = 2 if case == "quiet batch" else JOIN_GROUP_BUSY_ROWS
        scheduler.submit([src(20)] * running, key=GREEDY, timeout_s=10)
        await advance(runner, 3)  # step 3 is under way
        count = group if case == "a group's worth" else 1
        on_token = (lambda token: None) if case == "streamed" else None
        late = scheduler.submit([src(2)] * count, key=GREEDY, timeout_s=10, on_token=on_token)
        unleash(runner)
        for item in late:
            assert await item.future == "7 7"
        await scheduler.stop(5)
        joined_at = {
            next(i for i, c in enumerate(runner.calls) if it.seq_id in c[0]) for it in late
        }
        assert joined_at == {4 + held_steps}  # together, at the boundary after step 3 unless held

    asyncio.run(main())


def test_held_back_rules() -> None:
    policy = DecodePolicy(join_group=4)
    busy = JOIN_GROUP_BUSY_ROWS
    assert held_back(policy, 1, busy, 0, streamed=False)
    assert held_back(policy, 3, busy, JOIN_GROUP_MAX_HELD_STEPS - 1, streamed=False)
    assert not held_back(policy, 0, busy, 0, streamed=False)  # nobody waiting
    assert not held_back(policy, 4, busy, 0, streamed=False)  # a whole group
    assert not held_back(policy, 1, busy - 1, 0, streamed=False)  # a quiet batch
    assert not held_back(policy, 1, busy, JOIN_GROUP_MAX_HELD_STEPS, streamed=False)  # waited
    assert not held_back(policy, 1, busy, 0, streamed=True)
    assert not held_back(DecodePolicy(join_group=1), 1, busy, 0, streamed=False)
