"""`mvit demo-models` and `mvit predict`, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import encode, photo_like


def mvit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_models_writes_loadable_random_models(tmp_path: Path) -> None:
    result = mvit("demo-models", str(tmp_path), "--width", "0.75", "--image-size", "384")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.name == "mobilevitv2-0.75-imagenet1k-384-random"
    assert {p.name for p in path.iterdir()} == {
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "manifest.json",
    }
    assert json.loads((path / "manifest.json").read_text())["random_weights"] is True
    config = json.loads((path / "config.json").read_text())
    assert config["width_multiplier"] == 0.75 and config["id2label"]["281"] == "tabby, tabby cat"
    assert json.loads((path / "preprocessor_config.json").read_text())["crop_size"] == {
        "height": 384,
        "width": 384,
    }


def test_predict_prints_the_http_json(model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(encode(photo_like(320, 240, seed=4), "PNG"))
    result = mvit("predict", str(image), "--model", str(model_dir), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert len(output) == 3 and {"label", "score"} == set(output[0])


def test_predict_fails_clearly(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    result = mvit("predict", str(bad), "--model", str(model_dir))
    assert result.returncode == 1 and "not a recognised image" in result.stderr
    missing = mvit("predict", str(tmp_path / "nope.jpg"), "--model", str(model_dir))
    assert missing.returncode == 1 and "No such file" in missing.stderr
    bad_config = mvit("serve", "--port", "99999")
    assert bad_config.returncode != 0 and "invalid configuration" in bad_config.stderr
