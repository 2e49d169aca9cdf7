"""The step scheduler's encoder thread (service/decode_scheduler.py): joiners encoded beside the
running batch's step instead of inside it. Two uses: the joiners admitted at a step boundary,
encoded during that step to join at the next (`ahead`), and streamed sequences encoded as they
arrive while a step runs (`streams_early`). The runs it returns are `EncodedRun`s.

With `ahead` (the server's default with one lane and a core to spare) the decoder never waits
for the encoder: on the real translator the encoder took 28% of the step loop's time at 32
users (py-spy). Streamed sequences, whose client waits for the first piece, join at once, and a
joiner that arrives to an empty batch, with no step to overlap, is encoded inside the step. With
`streams_early` (a setting, off by default) a streamed sequence arriving while a step runs is
encoded beside it and joins at the next boundary already encoded: its first piece does not wait
for its encoder inside the step, nor do the other streams' steps."""

from __future__ import annotations

from collections.abc import Container, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from service.decode_items import DecodeItem, StepEngine


class JoinEncoder:
    """One scheduler's encoder thread (none when neither use is on). `take_ahead` and
    `on_arrival` are the scheduler's and the event loop's; the encoding itself runs here."""

    def __init__(self, name: str, engine: StepEngine, *, ahead: bool, streams_early: bool) -> None:
        self.ahead, self.streams_early = ahead, streams_early
        self._engine = engine
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix=f"encode-{name}")
            if ahead or streams_early
            else None
        )
        self._pending: tuple[list[DecodeItem], Future[Sequence[Any]]] | None = None

    def on_arrival(self, items: list[DecodeItem]) -> None:
        """Start each streamed item's encoder run (a run each: a stream is one text, and the
        budgets may admit the items of a request one by one)."""
        assert self._executor is not None and self.streams_early
        for item in items:
            item.encoding = self._executor.submit(self._engine.encode, [item.as_join()])

    def encode_ahead(self, items: list[DecodeItem]) -> None:
        """Encode `items` beside the step about to run; `take_ahead` hands their runs over."""
        assert self._executor is not None and self.ahead
        self._pending = (
            items,
            self._executor.submit(self._engine.encode, [i.as_join() for i in items]),
        )

    def take_ahead(self, running: Container[int]) -> list[Any]:
        """The runs encoded beside the last step (waiting for the encoder if it is still on
        them), minus the sequences no longer `running` (seq ids); raises what it raised."""
        if self._pending is None:
            return []
        items, future = self._pending
        self._pending = None
        gone = {item.seq_id for item in items if item.seq_id not in running}
        runs = [run.without(gone) for run in future.result()]
        return [run for run in runs if run is not None]

    @staticmethod
    def arrived(joins: list[DecodeItem]) -> list[Any]:
        """The runs of the joiners encoded as they arrived (waiting for any still running);
        raises what the encoder raised."""
        return [run for item in joins if item.encoding for run in item.encoding.result()]

    def forget(self) -> None:
        """Drop the runs encoded ahead (their sequences were answered otherwise)."""
        self._pending = None

    def shutdown(self) -> None:
        self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
