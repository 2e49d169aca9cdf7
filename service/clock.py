"""Time for the batcher: a `Clock` protocol (tests drive the loop with a fake one) and the real,
monotonic one."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until `event` is set (True) or `timeout` seconds passed (False)."""
        ...


class LoopClock:
    """The monotonic clock, with the event loop's timers for waiting."""

    def now(self) -> float:
        return time.monotonic()  # uvloop's loop.time() only has millisecond resolution

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
