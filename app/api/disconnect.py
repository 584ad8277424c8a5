"""Stop work whose caller has gone: a disconnected client's request is cancelled, not computed.

uvicorn does not cancel a handler when its client disconnects; it only reports `http.disconnect` to
whoever awaits `receive()`. Once the body has been read, nothing else awaits it, so a watcher can.
Cancelling the work cancels the future it awaits in the model's queue, and the batcher skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, or cancel it and raise ClientDisconnected if the client disconnects first.

    Call only once the request body has been read: the watcher consumes what `receive()` yields.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also on our own cancellation (a deadline): neither may outlive the request
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnected
