"""The preprocessing profile over HTTP: which one a model gets, that /models and a response header name
it, and that the answer really comes from its pixels (docs/preprocessing.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.errors import CheckpointError
from app.intake.decode import decode_image
from app.intake.preprocess import preprocess
from app.intake.profiles import trained_preprocessing
from app.nn.build import build_network
from app.repository import read_model_dir
from tests.support import encode, load_served, photo_like, serving


@pytest.fixture(scope="module")
def apple_like(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo classifier as `mvit fetch` leaves an Apple checkpoint: its manifest says ml-cvnets."""
    folder = tmp_path_factory.mktemp("apple") / "apple-like"
    shutil.copytree(model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(id="apple-like", training_pipeline="ml-cvnets")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_apple_weights_are_served_with_the_trained_profile(apple_like: Path) -> None:
    photo = encode(photo_like(1000, 667, seed=8), quality=95)
    with serving(apple_like) as client:
        answer = client.post("/classify?top_k=3", content=photo)
        described = client.get("/models").json()[0]
    assert answer.status_code == 200 and answer.headers["x-preprocessing"] == "trained"
    assert described["training_pipeline"] == "ml-cvnets"
    assert described["preprocessing"] == {
        "profile": "trained",
        "reason": "default for weights trained with ml-cvnets",
        "resize_shortest_edge": 288,
        "resize_height_width": None,
        "resample": "bicubic",
        "crop_height_width": [256, 256],
        "rescale_factor": 1 / 255,
        "mean": None,
        "std": None,
        "channel_order": "RGB",
        "crop_rounding": "round",
    }
    # The scores are the network's on the trained profile's pixels.
    pixels = preprocess(decode_image(photo, 10**8), trained_preprocessing("image-classification", (256, 256)))
    with torch.inference_mode():
        logits = build_network(read_model_dir(apple_like))(torch.from_numpy(pixels[None]))[0]
    expected = torch.softmax(logits.double(), dim=0).topk(3)
    assert [a["score"] for a in answer.json()] == pytest.approx(expected.values.tolist(), rel=1e-4)


@pytest.mark.parametrize("setting", ["hf", "trained"])
def test_the_setting_overrides_the_default(apple_like: Path, jpeg_bytes: bytes, setting: str) -> None:
    with serving(apple_like, preprocessing=setting) as client:
        answer = client.post("/classify", content=jpeg_bytes)
        described = client.get("/models").json()[0]["preprocessing"]
    assert answer.headers["x-preprocessing"] == described["profile"] == setting
    assert described["reason"] == "requested"
    assert described["channel_order"] == ("BGR" if setting == "hf" else "RGB")


def test_checkpoints_of_unknown_training_default_to_transformers(
    client: TestClient, jpeg_bytes: bytes
) -> None:
    answer = client.post("/classify", content=jpeg_bytes)
    assert answer.headers["x-preprocessing"] == "hf"


def test_an_unknown_recorded_profile_stops_the_model_in_one_line(apple_like: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(apple_like, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "preprocessing_profile": "bgr"}))
    with pytest.raises(CheckpointError, match="unknown preprocessing_profile 'bgr'"):
        load_served(folder)
