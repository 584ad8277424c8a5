"""Session fixtures (demo models of the three tasks, a photo, a served client) and the test groups.

tests/unit    one module at a time, no server: the quick subset (`python -m pytest -m quick`)
tests/api     the HTTP contract, in process (FastAPI's TestClient or uvicorn on loopback)
tests/e2e     the real CLI, live `mvit serve` processes, a browser, the deploy files
tests/parity  against the references: transformers and ml-cvnets (../shared/fixtures/cvnets), ONNX Runtime
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.tools.demo_models import write_demo_model
from tests.support import CVNETS_FIXTURES, cvnets_fixture, encode, photo_like, serving

QUICK_FOLDERS = ("unit",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name in QUICK_FOLDERS:
            item.add_marker(pytest.mark.quick)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest real MobileViTv2 classifier (width 0.5, 256 px) with seeded random weights."""
    return write_demo_model(tmp_path_factory.mktemp("models"), "image-classification", width=0.5, seed=0)


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return encode(photo_like(640, 480, seed=1), quality=90)


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


@pytest.fixture(scope="session")
def cvnets_fixtures() -> Path:
    """../shared/fixtures/cvnets, all three folders: a skip where missing, a failure in CI."""
    for name in ("mobilevitv2_0.5_imagenet", "deeplabv3_mobilevitv2_0.5_voc", "ssdlite_mobilevitv2_0.5_coco"):
        cvnets_fixture(name)
    return CVNETS_FIXTURES
