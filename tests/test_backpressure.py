"""Overload and abandonment: 429 when a model's queue is full, 504 past the deadline, and work whose
caller is gone (timed out, disconnected) dropped before it reaches the backend."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.metrics import Metrics
from app.repository import ModelDir
from app.runtime.models import ModelManager, load_backend
from tests.conftest import make_settings, wait_ready

MODEL_ID = "mobilevitv2-0.5-imagenet1k-256-random"


class GatedBackend:
    """A real backend whose calls, once armed, wait for the test to open the gate; counts real work."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.artifact, self.instances = inner, inner.name, inner.artifact, 1
        self.armed = False
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.images_computed = 0

    @property
    def device_type(self) -> str:
        return str(self.inner.device_type)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
            self.images_computed += len(batch)
        return dict(self.inner.infer(batch))

    infer_on_instance = infer


@contextmanager
def gated_app(model_dir: Path, **overrides: object) -> Iterator[tuple[FastAPI, GatedBackend]]:
    settings = make_settings(model_dir, max_batch_size=1, instances=1, **overrides)
    backends: list[GatedBackend] = []

    def loader(folder: ModelDir, s: Settings) -> GatedBackend:
        backends.append(GatedBackend(load_backend(folder, s)))
        return backends[-1]

    app = create_app(settings, ModelManager(settings, Metrics(), backend_loader=loader))
    try:
        yield app, backends
    finally:
        for backend in backends:
            backend.gate.set()


def pending(app: FastAPI) -> int:
    return int(app.state.manager.models[MODEL_ID].batcher.pending)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def metric(client: TestClient, needle: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(needle):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rejected(reason: str) -> str:
    return f'mvit_requests_rejected_total{{model="{MODEL_ID}",reason="{reason}"}}'


def test_a_full_queue_answers_429_at_once_with_retry_after(model_dir: Path, jpeg_bytes: bytes) -> None:
    with gated_app(model_dir, max_queue_size=2) as (app, backends), TestClient(app) as client:
        wait_ready(client)
        backend = backends[0]
        backend.armed = True
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(client.post, "/classify", content=jpeg_bytes) for _ in range(2)]
            wait_for(lambda: pending(app) == 2 and backend.entered.is_set(), "two requests held")
            assert metric(client, f'mvit_requests_pending{{model="{MODEL_ID}"}}') == 2
            started = time.perf_counter()
            refused = client.post("/classify", content=jpeg_bytes)
            assert time.perf_counter() - started < 2  # refused at once, not after the queue drains
            assert refused.status_code == 429
            assert "busy" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1
            backend.gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert metric(client, rejected("queue_full")) == 1
        assert pending(app) == 0
        assert client.post("/classify", content=jpeg_bytes).status_code == 200  # and it keeps serving


def test_past_the_deadline_504_and_queued_work_is_dropped(model_dir: Path, jpeg_bytes: bytes) -> None:
    with gated_app(model_dir, request_timeout_s=1.0) as (app, backends), TestClient(app) as client:
        wait_ready(client)
        backend = backends[0]
        backend.armed = True
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.post, "/classify", content=jpeg_bytes)
            backend.entered.wait(10)
            queued = pool.submit(client.post, "/classify", content=jpeg_bytes)
            for response in (running.result(), queued.result()):
                assert response.status_code == 504
                assert "did not finish within 1 s" in response.json()["error"]
        backend.gate.set()
        wait_for(lambda: pending(app) == 0, "the worker to settle")
        time.sleep(0.2)
        assert backend.images_computed == 1  # the running batch finished; the queued one never ran
        assert metric(client, rejected("timeout")) == 2
        backend.armed = False
        assert client.post("/classify", content=jpeg_bytes).status_code == 200


@contextmanager
def live(app: FastAPI) -> Iterator[int]:
    """The app under a real uvicorn on a loopback port, in a thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn to start")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_disconnected_clients_queued_work_is_dropped(model_dir: Path, jpeg_bytes: bytes) -> None:
    with gated_app(model_dir) as (app, backends), live(app) as port:
        client = TestClient(app)  # only to read /metrics without the lifespan: same app, same registry
        wait_for(lambda: app.state.manager.ready, "the model to load", 60)
        backend = backends[0]
        backend.armed = True
        request = (
            f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(jpeg_bytes)}\r\n\r\n"
        ).encode() + jpeg_bytes
        with socket.create_connection(("127.0.0.1", port)) as staying:
            staying.sendall(request)
            backend.entered.wait(10)
            with socket.create_connection(("127.0.0.1", port)) as leaving:
                leaving.sendall(request)
                wait_for(lambda: pending(app) == 2, "the second request to queue")
            # `leaving` is closed now, while its request waits behind the gate
            wait_for(lambda: metric(client, rejected("client_disconnected")) == 1, "the disconnect")
            assert pending(app) == 1
            backend.gate.set()
            staying.settimeout(30)
            assert staying.recv(12) == b"HTTP/1.1 200"
        assert backend.images_computed == 1


def test_models_route_reports_batching_settings(model_dir: Path) -> None:
    with (
        gated_app(model_dir, max_queue_size=5, max_queue_delay_ms=2.5) as (app, _),
        TestClient(app) as client,
    ):
        wait_ready(client)
        described = client.get("/models").json()[0]
        for field, value in {"max_queue_delay_ms": 2.5, "max_queue_size": 5, "instances": 1}.items():
            assert described[field] == value, field


def test_a_trickled_upload_gets_408_and_never_holds_a_queue_place(model_dir: Path, jpeg_bytes: bytes) -> None:
    with gated_app(model_dir, body_timeout_s=1.0) as (app, _), live(app) as port:
        client = TestClient(app)
        wait_for(lambda: app.state.manager.ready, "the model to load", 60)
        head = f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(jpeg_bytes)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(head.encode())
            slow.settimeout(0.1)
            started = time.monotonic()
            answer = b""
            for byte in jpeg_bytes[:100]:  # one byte every 50 ms: never idle long, never done
                slow.sendall(bytes([byte]))
                assert pending(app) == 0  # an upload in progress holds no place in the model's queue
                try:
                    answer = slow.recv(4096)
                    break
                except TimeoutError:
                    time.sleep(0.05)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert 0.9 < time.monotonic() - started < 5
            assert b"did not arrive within 1 s" in answer and b"connection: close" in answer.lower()
        assert metric(client, rejected("body_timeout")) == 1
        assert httpx.post(f"http://127.0.0.1:{port}/classify", content=jpeg_bytes).status_code == 200
