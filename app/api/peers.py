"""With `mvit serve --workers N`: what each worker knows of the others, in memory they all share.

Every worker's event loop writes, once a second, its heartbeat (app/api/workers.py) and whether it is
ready itself (its models loaded, its batchers running, not draining); the supervisor clears a worker's
mark when it exits. `/ready`, whichever worker answers it, is then ready only when every worker is.
"""

from __future__ import annotations

import time
from collections.abc import MutableSequence

# How often each worker marks its heartbeat and its readiness.
HEARTBEAT_S = 1.0
# A worker whose last mark is older than this counts as not ready (hung, or stopped), long before the
# supervisor's heartbeat timeout kills it; long enough that a loop slowed by a busy machine does not.
STALE_AFTER_S = 5 * HEARTBEAT_S


class Peers:
    """The shared marks, as worker `number` sees them."""

    def __init__(self, number: int, ready: MutableSequence[int], heartbeats: MutableSequence[float]) -> None:
        self.number = number
        self.ready = ready  # 1 when the worker found itself ready at its last heartbeat
        self.heartbeats = heartbeats  # time.monotonic() of each worker's last heartbeat; 0 before its first

    @property
    def count(self) -> int:
        return len(self.ready)

    def mark(self, ready: bool) -> None:
        self.heartbeats[self.number] = time.monotonic()
        self.ready[self.number] = int(ready)

    def not_ready(self) -> list[int]:
        """The other workers that are not ready: starting, loading, draining, failed, or silent."""
        now = time.monotonic()
        return [
            number
            for number in range(self.count)
            if number != self.number
            and not (self.ready[number] and now - self.heartbeats[number] <= STALE_AFTER_S)
        ]
