"""Overload and abandonment: 429 when a model's queue is full, 504 past the deadline, and work whose
caller is gone (timed out, disconnected) dropped before it reaches the backend."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tests.support import MODEL_ID, gated_app, live, metric, pending, rejected, wait_for, wait_ready


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
