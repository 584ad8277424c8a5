"""The HTTP contract: every body form, parameters, headers, errors, discovery routes, metrics."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import ServerSettings
from app.logs import ACCESS_LOGGER
from app.metrics import Metrics
from app.repository import ModelDir
from app.runtime.models import ModelManager, load_backend
from tests.support import encode, make_settings, photo_like, serving, wait_ready

MODEL_ID = "mobilevitv2-0.5-imagenet1k-256-random"


def assert_classification(body: object, count: int) -> None:
    assert isinstance(body, list) and len(body) == count
    for item in body:
        assert set(item) == {"label", "score"}
        assert isinstance(item["label"], str) and isinstance(item["score"], float)
    scores = [item["score"] for item in body]
    assert scores == sorted(scores, reverse=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the three body forms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "image/jpeg",
        "image/png",
        "application/octet-stream",
        "text/plain",
        "application/x-www-form-urlencoded",
    ],
)
def test_raw_bytes_with_any_content_type(
    client: TestClient, jpeg_bytes: bytes, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/classify", content=jpeg_bytes, headers=headers)
    assert response.status_code == 200, response.text
    assert_classification(response.json(), 5)


def test_all_forms_give_the_same_answer(client: TestClient, jpeg_bytes: bytes) -> None:
    raw = client.post("/classify", content=jpeg_bytes).json()
    gif = encode(photo_like(64, 64), "GIF")  # starts with ASCII "GIF8", as curl's default form type says
    curl_default = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post("/classify", content=gif, headers=curl_default).status_code == 200
    as_json = client.post("/classify", json={"inputs": b64(jpeg_bytes)}).json()
    alias = client.post(
        "/classify", json={"image": b64(jpeg_bytes), "options": {"wait_for_model": True}}
    ).json()
    data_url = client.post("/classify", json={"inputs": "data:image/jpeg;base64," + b64(jpeg_bytes)}).json()
    multipart = client.post("/classify", files={"file": ("cat.jpg", jpeg_bytes, "image/jpeg")}).json()
    no_type = client.post("/classify", content=json.dumps({"inputs": b64(jpeg_bytes)}).encode()).json()
    assert raw == as_json == alias == data_url == multipart == no_type
    assert_classification(raw, 5)


def test_parameters_in_json_query_and_form(client: TestClient, jpeg_bytes: bytes) -> None:
    in_json = client.post("/classify", json={"inputs": b64(jpeg_bytes), "parameters": {"top_k": 2}}).json()
    in_query = client.post("/classify?top_k=2", content=jpeg_bytes).json()
    in_form = client.post("/classify", files={"file": ("a.jpg", jpeg_bytes)}, data={"top_k": "2"}).json()
    form_json = client.post(
        "/classify", files={"image": ("a.jpg", jpeg_bytes)}, data={"parameters": json.dumps({"top_k": 2})}
    ).json()
    assert in_json == in_query == in_form == form_json
    assert_classification(in_json, 2)
    # The body wins over the query string.
    both = client.post("/classify?top_k=4", json={"inputs": b64(jpeg_bytes), "parameters": {"top_k": 1}})
    assert len(both.json()) == 1


def test_top_k_is_capped_at_the_number_of_labels(client: TestClient, jpeg_bytes: bytes) -> None:
    body = client.post("/classify?top_k=5000", content=jpeg_bytes).json()
    assert_classification(body, 1000)
    assert abs(sum(item["score"] for item in body) - 1.0) < 1e-6


def test_function_to_apply(client: TestClient, jpeg_bytes: bytes) -> None:
    def run(function: str) -> list[dict]:
        payload = {"inputs": b64(jpeg_bytes), "parameters": {"top_k": 1000, "function_to_apply": function}}
        return client.post("/classify", json=payload).json()

    softmax, sigmoid, none, upper = run("softmax"), run("sigmoid"), run("none"), run("SIGMOID")
    assert [x["label"] for x in softmax] == [x["label"] for x in sigmoid] == [x["label"] for x in none]
    assert upper == sigmoid
    logits = np.array([x["score"] for x in none])
    assert logits.min() < 0 < logits.max()  # raw logits
    np.testing.assert_allclose([x["score"] for x in sigmoid], 1 / (1 + np.exp(-logits)), rtol=1e-6)
    expected_softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([x["score"] for x in softmax], expected_softmax, rtol=1e-6)
    assert softmax[0]["score"] > softmax[-1]["score"]


def test_matches_transformers_pipeline(client: TestClient, model_dir: Path) -> None:
    from PIL import Image
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    for seed, size in enumerate([(640, 480), (300, 500), (1024, 768)]):
        data = encode(photo_like(*size, seed=seed + 10), "PNG")
        expected = classifier(Image.open(__import__("io").BytesIO(data)), top_k=5)
        actual = client.post("/classify", content=data).json()
        assert [x["label"] for x in actual] == [x["label"] for x in expected]
        np.testing.assert_allclose([x["score"] for x in actual], [x["score"] for x in expected], atol=1e-4)
        assert actual[0]["score"] - actual[-1]["score"] > 1e-3  # the answer is not flat


# --- routing and discovery ------------------------------------------------------------------------


def test_models_route_by_id(client: TestClient, jpeg_bytes: bytes) -> None:
    by_id = client.post(f"/models/{MODEL_ID}", content=jpeg_bytes)
    assert by_id.status_code == 200
    assert by_id.json() == client.post("/classify", content=jpeg_bytes).json()
    missing = client.post("/models/apple/not-served", content=jpeg_bytes)
    assert missing.status_code == 404
    assert "not served" in missing.json()["error"] and MODEL_ID in missing.json()["error"]


def test_response_headers(client: TestClient, jpeg_bytes: bytes) -> None:
    response = client.post("/classify", content=jpeg_bytes)
    assert float(response.headers["x-compute-time"]) > 0
    assert len(response.headers["x-compute-time"].split(".")[1]) == 3
    assert response.headers["x-compute-type"] == "cpu"
    assert response.headers["x-model-random-weights"] == "true"
    assert len(response.headers["x-request-id"]) >= 16
    phases = [part.split(";dur=")[0] for part in response.headers["server-timing"].split(", ")]
    assert phases == ["decode", "preprocess", "queue", "inference", "postprocess"]
    echoed = client.post("/classify", content=jpeg_bytes, headers={"X-Amzn-Trace-Id": "Root=1-abc"})
    assert echoed.headers["x-request-id"] == "Root=1-abc"
    assert (
        client.post("/classify", content=b"", headers={"x-request-id": "r-1"}).headers["x-request-id"]
        == "r-1"
    )


def test_health_ready_models_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "models": [MODEL_ID]}
    [model] = client.get("/models").json()
    assert model["id"] == MODEL_ID
    assert model["task"] == "image-classification" and model["backend"] == "torch"
    assert model["input_size"] == [256, 256] and model["num_labels"] == 1000
    assert model["width_multiplier"] == 0.5 and model["random_weights"] is True
    assert model["preprocessing"]["channel_order"] == "BGR"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/classify" in schema["paths"] and "/models/{model_id}" in schema["paths"]


def test_metrics(client: TestClient, jpeg_bytes: bytes) -> None:
    client.post("/classify", content=jpeg_bytes)
    client.post("/classify", content=b"junk")
    text = client.get("/metrics").text
    for needle in (
        'mvit_request_duration_seconds_bucket{endpoint="/classify",le="0.001"',
        f'model="{MODEL_ID}",status="200"',
        f'model="{MODEL_ID}",status="400"',
        f'mvit_phase_duration_seconds_count{{model="{MODEL_ID}",phase="decode"}}',
        'phase="preprocess"',
        'phase="queue"',
        'phase="inference"',
        'phase="postprocess"',
        'mvit_requests_in_flight{endpoint="/classify"}',
        f'mvit_model_load_seconds{{model="{MODEL_ID}"}}',
        'mvit_model_info{backend="torch",device="cpu",input_size="256x256"',
        'width="0.5"',
        "mvit_batch_size_bucket",
        f'mvit_requests_pending{{model="{MODEL_ID}"}} 0.0',
        "mvit_models_ready 1.0",
        'le="10.0"',
    ):
        assert needle in text, needle


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"content": b""}, 400, "empty"),
        ({"content": b"GIF89a not really"}, 400, "not a recognised image"),
        ({"content": b"hello world"}, 400, "not a recognised image"),
        ({"json": {"inputs": "https://example.com/cat.jpg"}}, 400, "URL inputs are not fetched"),
        ({"json": {"inputs": "http://127.0.0.1/cat.jpg"}}, 400, "URL inputs are not fetched"),
        ({"json": {"inputs": "!!!not base64!!!"}}, 400, "not valid base64"),
        ({"json": {"inputs": ""}}, 400, "empty"),
        ({"json": {"inputs": 42}}, 400, "must be a string"),
        ({"json": {"parameters": {"top_k": 1}}}, 400, "no 'inputs'"),
        ({"json": ["a", "b"]}, 400, "must be an object"),
        ({"json": {"inputs": "aGVsbG8=", "parameters": [1]}}, 400, "'parameters' must be an object"),
        ({"json": {"inputs": "aGVsbG8=", "parameters": []}}, 400, "'parameters' must be an object"),
        ({"json": {"inputs": "aGVsbG8=", "parameters": ""}}, 400, "'parameters' must be an object"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"inputs": "data:image/png,abc"}}, 400, "base64"),
        ({"files": {"a": ("a.jpg", b"x"), "b": ("b.jpg", b"y")}}, 400, "exactly one image"),
        ({"data": {"top_k": "1"}}, 400, "not a recognised image"),
    ],
)
def test_bad_bodies(client: TestClient, kwargs: dict, status: int, fragment: str) -> None:
    response = client.post("/classify", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"top_k": 0}, "at least 1"),
        ({"top_k": -3}, "at least 1"),
        ({"top_k": "three"}, "must be an integer"),
        ({"top_k": 2.5}, "must be an integer"),
        ({"top_k": True}, "must be an integer"),
        ({"function_to_apply": "relu"}, "function_to_apply"),
        ({"function_to_apply": 3}, "function_to_apply"),
        ({"topk": 3}, "Unknown parameter(s) for image-classification: topk"),
    ],
)
def test_bad_parameters_are_400(
    client: TestClient, jpeg_bytes: bytes, parameters: dict, fragment: str
) -> None:
    response = client.post("/classify", json={"inputs": b64(jpeg_bytes), "parameters": parameters})
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    query = client.post("/classify", params={k: str(v) for k, v in parameters.items()}, content=jpeg_bytes)
    assert query.status_code == 400 and fragment in query.json()["error"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [("jpeg_reduce_gap", 0.5), ("max_queue_size", 0), ("max_queue_delay_ms", -1), ("request_timeout_s", 0)],
)
def test_serving_settings_are_validated(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        ServerSettings(**{setting: value})


def test_body_and_pixel_limits_are_413(model_dir: Path, jpeg_bytes: bytes) -> None:
    with serving(model_dir, max_body_bytes=50_000, max_image_pixels=100_000) as small:
        too_big = small.post("/classify", content=b"\xff" * 60_000)
        assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
        streamed = small.post("/classify", content=iter([b"\xff" * 30_000, b"\xff" * 30_000]))
        assert streamed.status_code == 413
        too_many_pixels = small.post("/classify", content=encode(photo_like(400, 300), "JPEG", quality=30))
        assert too_many_pixels.status_code == 413 and "pixels" in too_many_pixels.json()["error"]
        assert small.post("/classify", content=encode(photo_like(300, 300), "JPEG")).status_code == 200


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    for response, status in (
        (client.get("/nope"), 404),
        (client.get("/classify"), 405),
        (client.put("/models"), 405),
    ):
        assert response.status_code == status
        assert "error" in response.json() and "detail" not in response.json()


# --- lifecycle: 503 while loading, 500 on a backend failure ---------------------------------------


class _GatedManager(ModelManager):
    """Holds model loading until the test opens the gate."""

    def __init__(self, settings: ServerSettings, gate: threading.Event) -> None:
        def slow_loader(model_dir: ModelDir, s: ServerSettings):  # type: ignore[no-untyped-def]
            gate.wait(30)
            return load_backend(model_dir, s)

        super().__init__(settings, Metrics(), backend_loader=slow_loader)


def test_503_with_estimated_time_only_while_loading(
    model_dir: Path, jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    settings = make_settings(model_dir)
    app = create_app(settings, _GatedManager(settings, gate))
    with TestClient(app) as loading, caplog.at_level(logging.DEBUG, logger=ACCESS_LOGGER):
        for response in (
            loading.post("/classify", content=jpeg_bytes),
            loading.post(f"/models/{MODEL_ID}", content=jpeg_bytes),
        ):
            assert response.status_code == 503
            body = response.json()
            assert "is currently loading" in body["error"] and body["estimated_time"] > 0
            assert int(response.headers["retry-after"]) >= 1
        ready = loading.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        # A probe polled while loading logs at debug; the requests' 503s stay warnings.
        levels = {r.getMessage(): r.levelno for r in caplog.records if r.name == ACCESS_LOGGER}
        assert levels == {
            "POST /classify 503": logging.WARNING,
            f"POST /models/{MODEL_ID} 503": logging.WARNING,
            "GET /ready 503": logging.DEBUG,
        }
        assert loading.get("/health").status_code == 200
        gate.set()
        wait_ready(loading)
        assert loading.post("/classify", content=jpeg_bytes).status_code == 200
        assert loading.post("/models/unknown", content=jpeg_bytes).status_code == 404


def test_backend_failure_is_a_generic_500_and_the_server_keeps_serving(
    model_dir: Path, jpeg_bytes: bytes
) -> None:
    fail = {"next": False}

    class FlakyBackend:
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            self.inner, self.name, self.artifact = inner, inner.name, inner.artifact
            self.instances = 1

        @property
        def device_type(self) -> str:
            return self.inner.device_type

        def infer(self, batch):  # type: ignore[no-untyped-def]
            if fail["next"]:
                raise RuntimeError("secret internal detail")
            return self.inner.infer(batch)

        infer_on_instance = infer

    settings = make_settings(model_dir)
    manager = ModelManager(settings, Metrics(), backend_loader=lambda d, s: FlakyBackend(load_backend(d, s)))
    with TestClient(create_app(settings, manager), raise_server_exceptions=False) as flaky:
        wait_ready(flaky)
        fail["next"] = True
        broken = flaky.post("/classify", content=jpeg_bytes)
        assert broken.status_code == 500
        assert broken.json() == {"error": "Internal server error"}
        fail["next"] = False
        assert flaky.post("/classify", content=jpeg_bytes).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path: Path, jpeg_bytes: bytes) -> None:
    (tmp_path / "broken").mkdir()
    settings = make_settings(tmp_path / "broken")
    with TestClient(create_app(settings)) as failed:
        for _ in range(200):
            if not failed.app.state.manager.loading:  # type: ignore[attr-defined]
                break
            time.sleep(0.01)
        ready = failed.get("/ready")
        assert ready.status_code == 503 and "has no weights" in ready.json()["error"]
        assert failed.post("/classify", content=jpeg_bytes).status_code == 404
