"""Failures that must not be silent: a dead batcher is seen by the probes, the callers and the metrics;
big bodies are parsed where they hold up no other request."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.api import body as body_module
from app.api import oip as oip_module
from app.api.body import PARSE_OFF_LOOP_BYTES
from app.api.server import serve
from tests.support import MODEL_ID, encode, free_port, make_settings, metric, photo_like, rejected, serving


def test_a_dead_batcher_fails_liveness_readiness_and_its_callers_at_once(
    model_dir: Path, jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(model_dir, request_timeout_s=20) as client:
        batcher = client.app.state.manager.models[MODEL_ID].batcher  # type: ignore[attr-defined]
        assert client.get("/health").json() == {"status": "ok"}
        assert metric(client, f'mvit_batcher_failures_total{{model="{MODEL_ID}"}}') == 0

        async def broken_collect(first: object) -> None:
            raise RuntimeError("injected bug")

        batcher._collect = broken_collect
        with caplog.at_level(logging.ERROR, logger="app.runtime.batcher"):
            started = time.perf_counter()
            held = client.post("/classify", content=jpeg_bytes)  # the job in the loop's hands when it died
            refused = client.post("/classify", content=jpeg_bytes)
            elapsed = time.perf_counter() - started
        for answer in (held, refused):
            assert answer.status_code == 503
            assert (
                "its batcher stopped after an internal error (RuntimeError: injected bug)"
                in (answer.json()["error"])
            )
        assert elapsed < 10  # not the 20 s request deadline
        died = [r for r in caplog.records if "died" in r.getMessage()]
        assert len(died) == 1 and died[0].exc_info is not None

        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert f"model {MODEL_ID}: RuntimeError: injected bug" in health.json()["error"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"] == health.json()["error"]
        live = client.get("/v2/health/live")
        assert live.status_code == 503 and live.json() == {"live": False, "error": health.json()["error"]}
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/classify/health").status_code == 503
        assert client.get(f"/v2/models/{MODEL_ID}/ready").status_code == 503

        assert metric(client, f'mvit_batcher_failures_total{{model="{MODEL_ID}"}}') == 1
        assert metric(client, rejected("unavailable")) == 2
        assert client.get("/models").status_code == 200  # the rest of the service keeps answering


def test_a_model_that_fails_while_loading_ends_the_server_with_status_1(
    model_dir: Path, tmp_path: Path
) -> None:
    """The checks before the port is bound pass (the folder is one); loading its weights fails after."""
    folder = shutil.copytree(model_dir, tmp_path / model_dir.name)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    settings = make_settings(folder, host="127.0.0.1", port=free_port(), backend="torch")
    started = time.monotonic()
    assert asyncio.run(serve(settings)) == 1
    assert time.monotonic() - started < 30


def big_photo() -> bytes:
    photo = encode(photo_like(900, 700, seed=3), "PNG")
    assert len(photo) > PARSE_OFF_LOOP_BYTES
    return photo


def record_threads(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[str]:
    """Patches `module.name` to note the thread each call runs on."""
    threads: list[str] = []
    original = getattr(module, name)

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(module, name, recording)
    return threads


def test_big_json_bodies_are_parsed_on_a_decode_thread(
    client: Any, jpeg_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = record_threads(monkeypatch, body_module, "parse_json")
    small = {"inputs": base64.b64encode(jpeg_bytes).decode()}
    big = {"inputs": base64.b64encode(big_photo()).decode()}
    for payload in (small, big):
        assert client.post("/classify", json=payload).status_code == 200
    assert not threads[0].startswith("decode") and threads[1].startswith("decode")


def test_big_open_inference_protocol_bodies_are_parsed_on_a_decode_thread(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = record_threads(monkeypatch, oip_module, "parse_infer_request")
    element = base64.b64encode(big_photo()).decode()
    payload = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [element]}]}
    answer = client.post(f"/v2/models/{MODEL_ID}/infer", content=json.dumps(payload))
    assert answer.status_code == 200, answer.text
    assert threads[0].startswith("decode")
