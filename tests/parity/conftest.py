"""Exported demo models shared by the ONNX Runtime and OpenVINO parity tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.backends.onnx_export import export_onnx
from app.repository import read_model_dir
from app.tools.demo_models import write_demo_model
from tests.support import TASKS


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Width-0.5 demo models of each task, exported to model.onnx."""
    root = tmp_path_factory.mktemp("onnx-models")
    folders = {task: write_demo_model(root, task, width=0.5, seed=3 + i) for i, task in enumerate(TASKS)}
    for folder in folders.values():
        export_onnx(read_model_dir(folder))
    return folders
