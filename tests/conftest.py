"""Session fixtures (demo models of the three tasks, a photo, a served client) and the lanes.

Every test carries its folder's marker, so `python -m pytest -m LANE` runs one lane:

tests/unit    one module at a time, no server
tests/api     the HTTP contract, in process (FastAPI's TestClient or uvicorn on loopback)
tests/deploy  the deployment files (Dockerfile, compose, Kubernetes, KServe), read and rendered: no server
tests/e2e     the real CLI, live `mvit serve` processes, Ray, a browser, the JavaScript client
tests/parity  against the references: transformers and ml-cvnets (../shared/fixtures/cvnets), ONNX Runtime
tests/images  the images built and run with podman (MVIT_IMAGES=1)

`quick` is tests/unit and the golden set, less what is marked `slow`: the check to run after every change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.tools.demo_models import write_demo_model
from tests.support import CVNETS_FIXTURES, TASKS, copy_model, cvnets_fixture, encode, photo_like, serving

LANES = ("unit", "api", "deploy", "e2e", "parity", "images")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        lane = item.path.parent.name
        if lane in LANES:
            item.add_marker(lane)
        if lane == "unit" and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.quick)


class DemoModels(Mapping[str, Path]):
    """The session's demo models by task, each written on first use: width 0.5, seeded 0, 1, 2 in the order
    of TASKS (the golden set's). A test that changes a folder works on a copy (`tests.support.copy_model`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: dict[str, Path] = {}

    def __getitem__(self, task: str) -> Path:
        if task not in self.written:
            self.written[task] = write_demo_model(self.root, task, width=0.5, seed=TASKS.index(task))
        return self.written[task]

    def __iter__(self) -> Iterator[str]:
        return iter(TASKS)

    def __len__(self) -> int:
        return len(TASKS)


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    return DemoModels(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_dir(demo_models: DemoModels) -> Path:
    """The smallest real MobileViTv2 classifier (width 0.5, 256 px) with seeded random weights."""
    return demo_models["image-classification"]


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return encode(photo_like(640, 480, seed=1), quality=90)


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with serving(model_dir, max_body_bytes=2_000_000, max_image_pixels=30_000_000) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def seg_model_dir(demo_models: DemoModels) -> Path:
    """A real-architecture MobileViTv2-0.5 + DeepLabV3 (VOC, 512 px) with seeded random weights."""
    return demo_models["image-segmentation"]


@pytest.fixture(scope="session")
def det_model_dir(demo_models: DemoModels) -> Path:
    """A real-architecture SSDLite-MobileViTv2-0.5 (COCO, 320 px) with seeded random weights."""
    return demo_models["object-detection"]


@pytest.fixture(scope="session")
def exported(demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the demo models, exported to model.onnx (for ONNX Runtime, OpenVINO and torch-free runs)."""
    from app.backends.onnx_export import export_onnx
    from app.repository import read_model_dir

    root = tmp_path_factory.mktemp("onnx-models")
    folders = {task: copy_model(folder, root) for task, folder in demo_models.items()}
    for folder in folders.values():
        export_onnx(read_model_dir(folder))
    return folders


@pytest.fixture(scope="session")
def cvnets_fixtures() -> Path:
    """../shared/fixtures/cvnets, all three folders: a skip where missing, a failure in CI."""
    for name in ("mobilevitv2_0.5_imagenet", "deeplabv3_mobilevitv2_0.5_voc", "ssdlite_mobilevitv2_0.5_coco"):
        cvnets_fixture(name)
    return CVNETS_FIXTURES
