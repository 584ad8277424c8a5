"""A real `mvit serve` process on loopback, driven by the real huggingface_hub InferenceClient."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import InferenceClient

from tests.support import (
    encode,
    photo_like,
    photo_with_shapes,
    running_server,
    start_server,
    wait_until_ready,
)


@pytest.fixture(autouse=True)
def loopback_is_not_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 (set in CI to prove no test needs the Hub) also blocks the client from loopback."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)


@pytest.fixture(scope="module")
def server(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[str]:
    with running_server(
        "--model", str(model_dir), "--model", str(seg_model_dir), "--model", str(det_model_dir)
    ) as url:
        yield url


def test_inference_client_raw_bytes(server: str, tmp_path: Path) -> None:
    client = InferenceClient(model=f"{server}/classify")
    image = tmp_path / "photo.jpg"
    image.write_bytes(encode(photo_like(640, 480, seed=5)))
    from_path = client.image_classification(str(image))
    from_bytes = client.image_classification(image.read_bytes())
    assert len(from_path) == 5
    assert [(x.label, x.score) for x in from_path] == [(x.label, x.score) for x in from_bytes]
    assert all(isinstance(x.label, str) and 0 <= x.score <= 1 for x in from_path)
    assert [x.score for x in from_path] == sorted((x.score for x in from_path), reverse=True)


def test_inference_client_json_with_parameters(server: str) -> None:
    client = InferenceClient(model=f"{server}/classify")
    data = encode(photo_like(500, 375, seed=6), "PNG")
    top3 = client.image_classification(data, top_k=3, function_to_apply="sigmoid")
    assert len(top3) == 3
    plain = client.image_classification(data, top_k=3)
    assert [x.label for x in top3] == [x.label for x in plain]
    assert top3[0].score > plain[0].score  # sigmoid of the top logit exceeds its softmax share


def test_inference_client_by_model_url_and_errors(server: str) -> None:
    client = InferenceClient(model=f"{server}/models/mobilevitv2-0.5-imagenet1k-256-random")
    assert len(client.image_classification(encode(photo_like(200, 200)), top_k=2)) == 2
    with pytest.raises(Exception, match="not a recognised image"):
        client.image_classification(b"definitely not an image")


def test_inference_client_image_segmentation(server: str) -> None:
    client = InferenceClient(model=f"{server}/segment")
    data = encode(photo_like(500, 375, seed=7))
    segments = client.image_segmentation(data)
    assert segments and all(isinstance(s.label, str) for s in segments)
    for segment in segments:
        assert segment.mask.size == (500, 375) and segment.mask.mode == "L"
    with_parameters = client.image_segmentation(data, subtask="semantic", threshold=0.9)
    assert [s.label for s in with_parameters] == [s.label for s in segments]
    with pytest.raises(Exception, match="semantic-only"):
        client.image_segmentation(data, subtask="panoptic")


def test_inference_client_object_detection(server: str) -> None:
    client = InferenceClient(model=f"{server}/detect")
    data = encode(photo_with_shapes(640, 360, seed=3))
    found = client.object_detection(data)  # raw bytes, default threshold 0.5
    assert found and all(x.score >= 0.5 for x in found)
    for x in found:
        assert isinstance(x.label, str)
        assert 0 <= x.box.xmin <= x.box.xmax <= 640 and 0 <= x.box.ymin <= x.box.ymax <= 360
    confident = client.object_detection(data, threshold=0.8)  # JSON with parameters
    assert 0 < len(confident) < len(found)
    assert [(x.label, x.score) for x in found if x.score >= 0.8] == [(x.label, x.score) for x in confident]


def test_a_model_that_cannot_load_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    process, _ = start_server("--model", str(tmp_path / "does-not-exist"))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "neither a model folder nor a Hugging Face Hub id" in output


def test_side_calls_of_the_client_on_every_route(server: str) -> None:
    """huggingface_hub 2.x asks for the provider on its side calls; then /health and /info answer at every
    model URL."""
    models = {
        "/classify": "mobilevitv2-0.5-imagenet1k-256-random",
        "/segment": "mobilevitv2-0.5-voc-deeplabv3-512-random",
        "/detect": "mobilevitv2-0.5-coco-ssdlite-320-random",
    }
    for route, model_id in models.items():
        for url in (f"{server}{route}", f"{server}/models/{model_id}"):
            client = InferenceClient(model=url, provider="hf-inference")
            assert client.health_check() is True, url
            info = client.get_endpoint_info()
            assert info["model_id"] == model_id and info["version"] and info["random_weights"] is True
    root = InferenceClient(model=server, provider="hf-inference")
    assert root.health_check() is True  # the service's liveness
    assert {m["model_id"] for m in root.get_endpoint_info()["models"]} >= {
        "mobilevitv2-0.5-imagenet1k-256-random"
    }
    with pytest.raises(Exception, match="3 models are served here"):
        root.image_classification(encode(photo_like(64, 64)))  # POST /: which of the three?


def test_the_endpoint_root_serves_the_only_model(model_dir: Path) -> None:
    process, url = start_server("--model", str(model_dir))
    try:
        wait_until_ready(process, url)
        client = InferenceClient(model=url, provider="hf-inference")
        assert len(client.image_classification(encode(photo_like(300, 200, seed=2)), top_k=2)) == 2
        assert client.get_endpoint_info()["model_pipeline_tag"] == "image-classification"
        assert client.health_check() is True
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
