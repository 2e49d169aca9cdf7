"""Process lifecycle: draining state (SIGTERM) and the count of accepted inference requests.

Draining turns readiness false at once and makes new work answer 503; `wait_idle` lets shutdown
wait until every accepted request has had its answer. Only accepted work counts: requests turned
away while draining do not keep the process alive.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.accepted = 0  # inference requests admitted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

    def work_started(self) -> None:
        self.accepted += 1
        self._idle.clear()

    def work_finished(self) -> None:
        self.accepted -= 1
        if self.accepted == 0:
            self._idle.set()

    def start_draining(self) -> None:
        if not self.draining:
            logger.info("draining: readiness is now false and new work is refused")
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when no accepted request is left, False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True
