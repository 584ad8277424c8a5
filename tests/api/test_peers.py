"""With workers, `/ready` answers for all of them, and a worker whose batcher died stops itself so that
the supervisor replaces it. In one process: a batcher cannot be made to die inside a real worker from
outside; tests/e2e/test_workers.py has the processes (replacement, readiness while replacing)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from app.api import workers as workers_module
from app.api.app import create_app
from app.api.peers import STALE_AFTER_S, Peers
from app.api.workers import beat
from tests.support import MODEL_ID, make_settings, wait_ready


def test_ready_only_when_every_worker_is(model_dir: Path) -> None:
    peers = Peers(0, [0, 0, 0], [0.0, 0.0, 0.0])  # this app is worker 0 of 3
    app = create_app(make_settings(model_dir), peers=peers)
    with TestClient(app) as client:
        wait_ready(client)
        # Its own mark is its loop's business (beat): the others' marks decide.
        for number in (1, 2):
            peers.ready[number], peers.heartbeats[number] = 1, time.monotonic()
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["workers_ready"] == 3
        assert client.get("/v2/health/ready").status_code == 200

        peers.ready[2] = 0  # exited, or replaced and loading
        waiting = client.get("/ready")
        assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "1"
        assert waiting.json() == {
            "status": "loading",
            "error": "1 of 3 workers not ready (worker 2: starting, loading or replaced)",
            "workers_ready": 2,
        }
        assert client.get("/v2/health/ready").status_code == 503

        peers.ready[2] = 1
        peers.heartbeats[1] = time.monotonic() - STALE_AFTER_S - 1  # its loop stopped marking: hung
        peers.heartbeats[2] = time.monotonic()
        assert client.get("/ready").json()["error"].startswith("1 of 3 workers not ready (worker 1:")
        assert client.get("/health").status_code == 200  # liveness is each worker's own


def test_a_worker_whose_batcher_died_marks_itself_not_ready_and_stops(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = Peers(1, [1, 1], [0.0, 0.0])
    app = create_app(make_settings(model_dir), peers=peers)
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(workers_module.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    listening = asyncio.Event()  # stands for the worker's listening socket: set once it is closed
    server = SimpleNamespace(started=True, servers=[SimpleNamespace(close=listening.set)])  # uvicorn's

    async def one_beat() -> None:
        task = asyncio.create_task(beat(app, peers, server))
        await asyncio.sleep(0.2)
        task.cancel()

    with TestClient(app) as client:
        wait_ready(client)
        asyncio.run(one_beat())
        assert peers.ready[1] == 1 and signals == [] and not listening.is_set()  # healthy: keeps running
        before = peers.heartbeats[1]
        app.state.manager.models[MODEL_ID].batcher.failure = "RuntimeError: injected bug"
        asyncio.run(one_beat())
    assert peers.ready[1] == 0 and peers.heartbeats[1] > before
    assert listening.is_set()  # new connections go to the other workers
    assert [sig for _, sig in signals] == [signal.SIGTERM]  # the drain a stop runs, then replaced
