"""`mvit demo-models` and `mvit predict`, run as a user would."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.support import cvnets_fixture, encode, mvit, photo_like, serving


def test_demo_models_writes_loadable_random_models(tmp_path: Path) -> None:
    result = mvit(
        "demo-models", str(tmp_path), "--task", "classification", "--width", "0.75", "--image-size", "384"
    )
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
    no_task = mvit("demo-models", str(tmp_path), "--task", "captioning")
    assert no_task.returncode == 2 and "invalid choice" in no_task.stderr
    bad_config = mvit("serve", "--port", "99999")
    assert bad_config.returncode != 0 and "invalid configuration" in bad_config.stderr


def test_convert_cvnets_checkpoint_then_predict(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    fixture = cvnets_fixture("mobilevitv2_0.5_imagenet")
    checkpoint = tmp_path / "mobilevitv2-0.5.pt"  # as Apple publishes them: a plain torch.save'd state dict
    torch.save(load_file(str(fixture / "state_dict.safetensors")), checkpoint)
    result = mvit("convert", str(checkpoint), str(tmp_path / "models"))
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.name == "cvnets-mobilevitv2-0.5-imagenet1k-256"
    image = tmp_path / "photo.png"
    image.write_bytes(encode(photo_like(300, 300, seed=2), "PNG"))
    predicted = mvit("predict", str(image), "--model", str(folder), "--top-k", "2")
    assert predicted.returncode == 0 and len(json.loads(predicted.stdout)) == 2


def test_convert_refuses_pickles_and_foreign_checkpoints(tmp_path: Path) -> None:
    import pickle

    import torch

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (exec, ("open('PWNED', 'w').write('x')",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Exploit()}))
    result = mvit("convert", str(evil), str(tmp_path / "out"))
    assert result.returncode == 1 and "weights_only" in result.stderr
    assert not Path("PWNED").exists() and not (tmp_path / "PWNED").exists()
    foreign = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    result = mvit("convert", str(foreign), str(tmp_path / "out"))
    assert result.returncode == 1 and "unknown keys (fc.weight)" in result.stderr


def test_tune_measures_records_and_the_server_applies_it(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    result = mvit(
        "tune", str(folder), "--backend", "onnx", "--seconds", "0.1", "--rounds", "2", "--batch-sizes", "1,2",
        "--instances", "1,2", "--inference-threads", "2", "--try-spinning",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded in" in result.stdout and "round 2/2" in result.stderr
    record = json.loads((folder / "tuning.json").read_text())["records"][0]
    assert record["key"]["backend"] == "onnx" and record["key"]["threads"] == 2
    assert record["command"].startswith("mvit tune ") and len(record["measured"]) == 8  # 2 x 2 x 2
    assert all(len(row["images_per_s_range"]) == 2 and row["images_per_s"] > 0 for row in record["measured"])
    assert record["artifact_sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    chosen = record["chosen"]
    with serving(folder, backend="onnx") as client:
        described = client.get("/models").json()[0]
    assert described["tuning"]["tuned"] is True and described["tuning"]["applied"] == chosen
    assert (described["max_batch_size"], described["instances"]) == (
        chosen["max_batch_size"],
        chosen["instances"],
    )


def test_tune_fails_clearly(tmp_path: Path) -> None:
    missing = mvit("tune", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr.startswith("mvit tune: ")
    bad_sizes = mvit("tune", str(tmp_path), "--batch-sizes", "0,2")
    assert bad_sizes.returncode == 2 and "give positive integers" in bad_sizes.stderr
