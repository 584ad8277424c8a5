"""The server: `run_server(settings)` owns uvicorn, the models' start-up and the drain, and returns the
process's exit status, as KServe's RESTServer does.

Graceful shutdown: accepted requests finish, new ones are turned away, then the process exits 0.

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
import socket
import time
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from app.api.app import create_app
from app.config import ServerSettings
from app.runtime.lifecycle import Lifecycle

log = logging.getLogger(__name__)

# After the drain, how long uvicorn waits for connections still open (a request past the drain timeout,
# a slow upload) before it cuts them.
AFTER_DRAIN_S = 2.0


def run_server(settings: ServerSettings) -> int:
    """Serve until SIGTERM or SIGINT (exit status 0 after the drain), or until a model fails to load (1)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(serve(settings))


def uvicorn_config(app: FastAPI, settings: ServerSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # app.logs configured the handlers
        access_log=False,  # the app writes its own access lines (request id, model, phases)
        timeout_graceful_shutdown=AFTER_DRAIN_S,
    )


def draining_server(app: FastAPI, settings: ServerSettings) -> DrainingServer:
    return DrainingServer(uvicorn_config(app, settings), app.state.lifecycle, settings.drain_timeout_s)


async def serve(settings: ServerSettings) -> int:
    app = create_app(settings)
    server = draining_server(app, settings)
    manager = app.state.manager
    serving = asyncio.create_task(server.serve())
    loaded = asyncio.create_task(manager.loaded.wait())
    await asyncio.wait({loaded, serving}, return_when=asyncio.FIRST_COMPLETED)
    loaded.cancel()
    if manager.error:
        log.error("mvit: stopping, a model could not be loaded: %s", manager.error)
        server.should_exit = True
    await serving
    return 1 if manager.error else 0


async def serve_loaded(
    app: FastAPI, server: DrainingServer, listen: Callable[[], socket.socket], on_ready: Callable[[], None]
) -> int:
    """One worker of several (app/api/workers.py): its models loaded before it listens (`listen` gives
    its socket), so that the workers already serving answer meanwhile; `on_ready` once it accepts. 1 when a
    model cannot be loaded, or when a batcher died (the worker stopped so as to be replaced)."""
    manager = app.state.manager
    await manager.load_all()
    if manager.error:
        log.error("mvit: stopping, a model could not be loaded: %s", manager.error)
        return 1
    serving = asyncio.create_task(server.serve(sockets=[listen()]))
    while not server.started and not serving.done():  # uvicorn has no event for it
        await asyncio.sleep(0.01)
    if server.started:
        on_ready()
    await serving
    return 1 if manager.failures() else 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): a cheaper loop for every request's hops
    between the event loop and the decode and inference threads. Plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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
