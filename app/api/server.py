"""Graceful shutdown: accepted requests finish, new ones are turned away, then the process exits 0.

On SIGTERM (or SIGINT) the service drains before uvicorn stops listening, so that callers arriving in the
meantime get a clear 503 + Retry-After (and `/ready` turns 503 at once, taking the instance out of a load
balancer) instead of a refused connection. Requests already accepted, queued ones included, run to their
answer, for up to `drain_timeout_s`. Then uvicorn closes idle connections and runs the app's shutdown
(batchers stop, models close). A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator

import uvicorn

from app.runtime.drain import Lifecycle

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its own shutdown, and exit status 0 after a requested stop (uvicorn
    re-raises the signal after shutting down, so the process would report "killed by SIGTERM")."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_timeout_s = drain_timeout_s
        self._drain: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: object) -> None:
        if self._drain is None and not self.should_exit:
            self._drain = asyncio.get_running_loop().create_task(self.drain_then_exit())
        else:  # a second signal: stop waiting
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    async def drain_then_exit(self) -> None:
        started = time.monotonic()
        self.lifecycle.start_draining()
        if self.lifecycle.active:
            log.info(
                "draining: %d accepted request(s) to finish (at most %g s)",
                self.lifecycle.active,
                self.drain_timeout_s,
            )
        if await self.lifecycle.drained(self.drain_timeout_s):
            log.info("drained in %.2f s: every accepted request has its answer", time.monotonic() - started)
        else:
            log.warning(
                "drain timeout (%g s): %d request(s) still running will be cut off",
                self.drain_timeout_s,
                self.lifecycle.active,
            )
        self.should_exit = True
