"""`mvit serve --workers N`: N server processes on one port, each with its own models, under a supervisor.

One Python process cannot keep a many-core CPU or a GPU busy: the GIL holds HTTP, decoding and
post-processing to about one core. The supervisor claims the port and starts N workers (spawned, so
nothing of its state is shared). Each loads its models, then listens on the port with a socket of its
own (SO_REUSEPORT): the kernel spreads new connections over the listening workers, so a proxy's pool of
keep-alive connections is shared among them, and none waits on a worker that is loading or dead.

- /ready is ready only when every worker is (app/api/peers.py).
- The inference and decode threads are divided among the workers, so that N of them never ask for
  more cores than one would.
- A worker that dies is logged once, counted (`mvit_worker_restarts_total`) and replaced. Requests it
  held fail with a reset connection; the other workers' requests are untouched.
- A worker whose event loop stops marking its heartbeat (hung, or stopped) is killed, then replaced.
- A worker that fails before it has served (a model that cannot load) stops them all: exit status 1.
- SIGTERM or SIGINT: every worker drains as a single server does, then the supervisor exits 0.
- /metrics, from any worker, sums all of them (app/metrics.py).
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING

from app.api.peers import HEARTBEAT_S, Peers
from app.config import ServerSettings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from prometheus_client import Counter

log = logging.getLogger(__name__)

# After the drain timeout, how long a stopping worker may take to close before it is killed.
STOP_MARGIN_S = 10.0
# A worker that dies within this long of its start dies "quickly"; after the second quick death in a row,
# its replacement waits 1, 2, 4, ... up to MAX_RESTART_DELAY_S, so that a crash loop does not reload the
# models without pause.
QUICK_DEATH_S = 60.0
MAX_RESTART_DELAY_S = 30.0


def worker_settings(settings: ServerSettings) -> ServerSettings:
    """One worker's settings: its share of the inference and decode threads, at least one of each."""
    count = settings.workers
    return settings.model_copy(
        update={
            "inference_threads": max(1, settings.inference_threads // count),
            "decode_threads": max(1, settings.decode_threads // count),
        }
    )


# Linux balances new connections among the listening sockets that share a port (SO_REUSEPORT) by a hash
# of each connection's addresses, whatever the workers are doing. Where it does not (other systems), the
# workers accept on one socket instead.
OWN_SOCKETS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
BACKLOG = 2048


def port_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if OWN_SOCKETS:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def claim_port(host: str, port: int) -> tuple[socket.socket, socket.socket | None]:
    """The supervisor's socket, and on Linux a guard held while it runs. There, the socket is bound, not
    listening: connections go only to the workers' own sockets, each opened once its models are loaded,
    so that none waits on a worker that is loading, or dead. Elsewhere, the one socket all workers share.

    The guard: sockets of one user that all ask for SO_REUSEPORT may share a port, so a second `--workers`
    server on the same port would start and split the first one's traffic, silently. Each claims the port
    with a name in the abstract socket namespace, which (like the port) belongs to the network namespace
    and is released when the process ends."""
    sock = port_socket(host, port, listen=not OWN_SOCKETS)
    if not OWN_SOCKETS:
        return sock, None
    port = sock.getsockname()[1]  # port 0 asks the system for one
    guard = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        guard.bind(f"\0mvit-serve-workers-port-{port}")
    except OSError:
        sock.close()
        guard.close()
        raise OSError(
            errno.EADDRINUSE, f"cannot listen on {host}:{port}: another `mvit serve --workers` has it"
        ) from None
    return sock, guard


def run_worker(settings: ServerSettings, shared: socket.socket | None, slot: Slot) -> None:
    """A worker process: the server, listening once its models are loaded (on the `shared` socket where
    workers cannot have their own)."""
    import asyncio

    from app.api.app import create_app
    from app.api.server import draining_server, event_loop_factory, serve_loaded
    from app.logs import configure_logging

    # Only the supervisor gets a terminal's Ctrl-C, and stops each worker once (a second signal would cut
    # its drain short); a worker whose supervisor is killed is sent SIGTERM (Linux).
    os.setpgrp()
    stop_with_parent()
    configure_logging(settings.log_level, settings.log_format, worker=slot.number)
    if shared is not None:
        share_connections()

    def listen() -> socket.socket:
        return shared if shared is not None else port_socket(settings.host, settings.port, listen=True)

    peers = Peers(slot.number, slot.ready, slot.heartbeats)

    async def main() -> int:
        app = create_app(settings, peers=peers)
        server = draining_server(app, settings)
        beating = asyncio.create_task(beat(app, peers, server))
        try:
            return await serve_loaded(app, server, listen, slot.served.set)
        finally:
            beating.cancel()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        raise SystemExit(runner.run(main()))


async def beat(app: FastAPI, peers: Peers, server: uvicorn.Server) -> None:
    """From the worker's event loop, once a second: its heartbeat and its own readiness, its models loaded
    and its server accepting (loading runs in a thread, so a loop that stops beating is stuck). A worker
    whose batcher died cannot recover: it stops listening (new connections go to the other workers),
    drains and exits, to be replaced."""
    import asyncio

    from app.api.ops import own_readiness

    manager, lifecycle = app.state.manager, app.state.lifecycle
    while True:
        status, _, _ = own_readiness(manager, lifecycle)
        peers.mark(status == 200 and server.started)
        if manager.failures() and not lifecycle.draining:
            log.error("a batcher died (%s): this worker stops and is replaced", manager.failures())
            for listening in server.servers:
                listening.close()
            os.kill(os.getpid(), signal.SIGTERM)  # the drain a stop runs; the exit status says it failed
        await asyncio.sleep(HEARTBEAT_S)


def share_connections() -> None:
    """On one shared socket, the first worker that wakes takes every connection waiting (libuv, under
    uvloop, accepts until none is left), so a burst of keep-alive connections, a proxy's pool, all land
    on one worker and the others idle (docs/performance.md has the figures). libuv's UV_TCP_SINGLE_ACCEPT
    makes each worker accept one connection at a time and yield, so the others take their share. Plain
    asyncio has no such switch: hence the warning."""
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    if importlib.util.find_spec("uvloop") is None:
        log.warning("uvloop is not installed: connections may gather on one worker (pip install uvloop)")


def stop_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) where the C library has it."""
    import ctypes.util

    name = ctypes.util.find_library("c")
    prctl = getattr(ctypes.CDLL(name), "prctl", None) if name else None
    if prctl is not None:
        prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Slot:
    """What a worker shares with the supervisor and the other workers."""

    number: int
    served: Event  # set once its models are loaded and it accepts
    ready: MutableSequence[int]  # app/api/peers.py: every worker's readiness
    heartbeats: MutableSequence[float]  # and time.monotonic() of its loop's last beat (one clock for all)


@dataclass
class Worker:
    slot: Slot
    process: SpawnProcess
    replacement: bool  # started after another died, not with the server
    started_at: float = field(default_factory=time.monotonic)

    @property
    def number(self) -> int:
        return self.slot.number

    @property
    def heartbeat(self) -> float:
        return self.slot.heartbeats[self.number]


class Supervisor:
    def __init__(self, settings: ServerSettings, sock: socket.socket) -> None:
        # The port as bound (port 0 asks the system for one), for the workers' own sockets.
        settings = settings.model_copy(update={"port": sock.getsockname()[1]})
        if not isinstance(settings.workers, int):
            raise TypeError("resolve --workers auto to a count before starting the workers")
        self.settings = settings
        self.each = worker_settings(settings)
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.quick_deaths: dict[int, int] = {}  # in a row, by worker number
        self.restart_at: dict[int, float] = {}  # replacements that wait (time.monotonic())
        # One place per worker, shared with all of them (written without a lock: one writer per place).
        self.ready = self.context.Array("b", settings.workers, lock=False)
        self.heartbeats = self.context.Array("d", settings.workers, lock=False)
        self.stopping = False
        self.failed = False

    def start(self, number: int, replacement: bool = False) -> None:
        self.ready[number], self.heartbeats[number] = 0, 0.0
        slot = Slot(number, self.context.Event(), self.ready, self.heartbeats)
        process = self.context.Process(
            target=run_worker,
            args=(self.each, None if OWN_SOCKETS else self.sock, slot),
            name=f"mvit-worker-{number}",
        )
        process.start()
        self.workers[number] = Worker(slot, process, replacement)
        if self.stopping and process.pid is not None:  # a stop that came while it was starting
            os.kill(process.pid, signal.SIGTERM)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.stopping = True
        for worker in self.workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, sig)

    def supervise(self) -> int:
        """Until every worker has exited after a stop; replaces the ones that die on their own."""
        from prometheus_client import Counter
        from prometheus_client.multiprocess import mark_process_dead

        restarts = Counter(
            "mvit_worker_restarts",
            "Workers (mvit serve --workers) that died and were replaced.",
            registry=None,
        )
        for number in range(self.settings.workers):
            self.start(number)
        deadline: float | None = None
        while self.workers or (self.restart_at and not self.stopping):
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.settings.drain_timeout_s + STOP_MARGIN_S
            sentinels = {worker.process.sentinel: worker for worker in self.workers.values()}
            if sentinels:
                exited = wait(list(sentinels), timeout=0.5)
            else:  # every worker waits to be restarted
                exited = []
                time.sleep(0.5)
            for sentinel in exited:
                worker = sentinels[sentinel]  # type: ignore[index]
                del self.workers[worker.number]
                self.ready[worker.number] = 0
                worker.process.join()
                if worker.process.pid is not None:
                    mark_process_dead(worker.process.pid)
                self.ended(worker, restarts)
            if not self.stopping:
                self.kill_the_stuck()
                self.restart_the_due()
            if deadline is not None and time.monotonic() > deadline:
                log.error("workers still running %g s after the drain timeout: killing them", STOP_MARGIN_S)
                self.stop(signal.SIGKILL)
                deadline = float("inf")
        return 1 if self.failed else 0

    def kill_the_stuck(self) -> None:
        """SIGKILL a worker whose loop has not beaten for `worker_heartbeat_timeout_s`: its death is then
        handled as any other."""
        limit = self.settings.worker_heartbeat_timeout_s
        for worker in self.workers.values():
            if not worker.heartbeat:  # still starting: its loop has not run yet
                continue
            silent = time.monotonic() - worker.heartbeat
            if silent > limit and worker.process.pid is not None and worker.process.is_alive():
                log.error(
                    "worker %d (pid %s) stopped answering (no heartbeat for %.1f s): killing it",
                    worker.number,
                    worker.process.pid,
                    silent,
                )
                os.kill(worker.process.pid, signal.SIGKILL)
                self.ready[worker.number] = 0
                self.heartbeats[worker.number] = float("inf")  # once (peers read it as silent: not ready)

    def ended(self, worker: Worker, restarts: Counter) -> None:
        code = worker.process.exitcode
        if self.stopping:
            if code not in (0, -signal.SIGTERM):  # stopped while loading: nothing was accepted yet
                log.warning(
                    "worker %d (pid %s) exited with status %s", worker.number, worker.process.pid, code
                )
                self.failed = True
            return
        if not worker.slot.served.is_set() and not worker.replacement:
            log.error(
                "worker %d (pid %s) exited with status %s before it served: stopping",
                worker.number,
                worker.process.pid,
                code,
            )
            self.failed = True
            self.stop()
            return
        delay = self.restart_delay(worker)
        later = f" in {delay:g} s ({self.quick_deaths[worker.number]} quick deaths in a row)" if delay else ""
        if not worker.slot.served.is_set():  # a replacement that could not load
            how = "exited with status %s before it served: starting another" + later
        elif code is not None and code < 0:  # killed by a signal: no drain
            how = "died (exit status %s): starting another" + later + "; its requests in flight were cut off"
        else:  # it stopped itself after a drain (a batcher died)
            how = "stopped (exit status %s): starting another" + later
        log.error("worker %d (pid %s) " + how, worker.number, worker.process.pid, code)
        restarts.inc()
        self.restart_at[worker.number] = time.monotonic() + delay
        self.restart_the_due()

    def restart_delay(self, worker: Worker) -> float:
        if time.monotonic() - worker.started_at >= QUICK_DEATH_S:
            self.quick_deaths[worker.number] = 0
            return 0.0
        count = self.quick_deaths[worker.number] = self.quick_deaths.get(worker.number, 0) + 1
        return 0.0 if count == 1 else min(MAX_RESTART_DELAY_S, 2.0 ** (count - 2))

    def restart_the_due(self) -> None:
        now = time.monotonic()
        for number, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[number]
                self.start(number, replacement=True)


def run_workers(settings: ServerSettings) -> int:
    """Serve with `settings.workers` processes until SIGTERM or SIGINT (0 after every worker has drained),
    or until one fails before serving (1)."""
    sock, guard = claim_port(settings.host, settings.port)
    supervisor = Supervisor(settings, sock)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: supervisor.stop())
    log.info(
        "mvit: %d workers on http://%s:%d, %d inference and %d decode threads each",
        settings.workers,
        settings.host,
        supervisor.settings.port,
        supervisor.each.inference_threads,
        supervisor.each.decode_threads,
    )
    try:
        return supervisor.supervise()
    finally:
        sock.close()
        if guard is not None:
            guard.close()
