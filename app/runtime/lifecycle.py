"""The drain: counts accepted inference requests, and turns new ones away once shutdown has begun.

`app.api.server.DrainingServer` starts it on SIGTERM and waits for `drained()` before uvicorn stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from app.errors import ShuttingDown

# What a turned-away caller is told: retry soon, presumably on another instance or after a restart.
RETRY_AFTER_DRAINING_S = 5


class Lifecycle:
    """Counts the inference requests the service has accepted and refuses new ones once draining."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle = asyncio.Event()

    @contextlib.contextmanager
    def accept(self) -> Iterator[None]:
        """Hold the request open for the drain, or raise ShuttingDown when the service is draining."""
        if self.draining:
            raise ShuttingDown(RETRY_AFTER_DRAINING_S)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    def start_draining(self) -> None:
        self.draining = True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every accepted request has its answer; False when `timeout_s` ran out first."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.active:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True
