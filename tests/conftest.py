from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api import create_app
from app.config import Settings
from app.tools.demo_models import write_demo_model


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with noise: varied enough that models and resizers disagree on mistakes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(xx / (7 + 13 * rng.random()) + rng.random() * 6),
            128 + 100 * np.cos(yy / (5 + 11 * rng.random()) + rng.random() * 6),
            128 + 90 * np.sin((xx + yy) / (9 + 17 * rng.random())),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest real MobileViTv2 classifier (width 0.5, 256 px) with seeded random weights."""
    return write_demo_model(tmp_path_factory.mktemp("models"), "image-classification", width=0.5, seed=0)


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return encode(photo_like(640, 480, seed=1), quality=90)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Until every model is loaded (asked of the app itself: /ready may need a token)."""
    manager = client.app.state.manager  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and manager.loading:
        time.sleep(0.05)
    if not manager.ready:
        raise AssertionError(f"service not ready: loading={manager.loading}, error={manager.error}")


def make_settings(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "models": [str(model_dir)],
        "inference_threads": 2,
        "decode_threads": 2,
        "model_repository": model_dir.parent,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def serving(model_dir: Path, **overrides: object) -> Iterator[TestClient]:
    """An in-process app serving one model folder, ready (loaded and warmed up)."""
    app = create_app(make_settings(model_dir, **overrides))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with serving(model_dir, max_body_bytes=2_000_000, max_image_pixels=30_000_000) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def seg_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-architecture MobileViTv2-0.5 + DeepLabV3 (VOC, 512 px) with seeded random weights."""
    return write_demo_model(tmp_path_factory.mktemp("seg-models"), "image-segmentation", width=0.5, seed=1)


@pytest.fixture(scope="session")
def det_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-architecture SSDLite-MobileViTv2-0.5 (COCO, 320 px) with seeded random weights."""
    return write_demo_model(tmp_path_factory.mktemp("det-models"), "object-detection", width=0.5, seed=2)
