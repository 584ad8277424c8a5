"""`--backend onnx` serves all three tasks in a process where torch & co. cannot even be imported."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.support import copy_model, encode, photo_with_shapes, start_server, wait_until_ready

# What the ONNX-only install ([onnx] extra) does not have. Importing any of them fails, as it would
# there, and at exit the process reports which of them were loaded anyway (must be none).
NOT_INSTALLED = ("torch", "transformers", "safetensors", "huggingface_hub", "onnx", "onnxscript")
LAUNCHER = f"""
import atexit, importlib.abc, json, sys
BLOCKED = {NOT_INSTALLED!r}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NotInstalled())
atexit.register(lambda: print("LOADED " + json.dumps(sorted({{m for m in sys.modules if m.split(".")[0] in BLOCKED}}))))
from app.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def onnx_repository(exported: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("edge-models")
    return [copy_model(folder, root) for folder in exported.values()]


def test_onnx_backend_serves_without_torch(onnx_repository: list[Path]) -> None:
    args = [arg for folder in onnx_repository for arg in ("--model", str(folder))]
    process, url = start_server(*args, "--backend", "onnx", launcher=("-c", LAUNCHER))
    try:
        wait_until_ready(process, url)
        image = encode(photo_with_shapes(640, 480, seed=3))
        for route, key in (("classify", "score"), ("segment", "mask"), ("detect", "box")):
            response = httpx.post(f"{url}/{route}", content=image, timeout=30)
            assert response.status_code == 200, response.text
            assert response.json() and key in response.json()[0]
        models = httpx.get(f"{url}/models").json()
        assert {(m["backend"], m["artifact"]) for m in models} == {("onnx", "model.onnx")}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    loaded = [line for line in output.splitlines() if line.startswith("LOADED ")]
    assert loaded and json.loads(loaded[-1].removeprefix("LOADED ")) == [], output


def test_torch_backend_without_torch_fails_in_one_line(onnx_repository: list[Path]) -> None:
    process, _ = start_server("--model", str(onnx_repository[0]), launcher=("-c", LAUNCHER))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "the torch backend needs torch, which is not installed" in output and "Traceback" not in output
