"""Finding model folders: local paths, the model repository, and the Hub download path (mocked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from app.repository import CheckpointError, read_model_dir, resolve
from app.repository.hub import hub_folder
from app.repository.resolve import ensure_available
from tests.support import FakeHub, hub_like


def test_local_folder_and_repository_name(model_dir: Path) -> None:
    by_path = resolve(str(model_dir), Path("/nonexistent"))
    by_name = resolve(model_dir.name, model_dir.parent)
    assert by_path.path == by_name.path == model_dir
    assert by_path.model_id == model_dir.name and by_path.random_weights
    assert by_path.task == "image-classification" and len(by_path.labels) == 1000


def test_a_hub_id_is_fetched_once_into_the_repository_and_resolving_never_downloads(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeHub(
        hub_like(model_dir, tmp_path), {"config.json", "preprocessor_config.json", "pytorch_model.bin"}
    )
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    monkeypatch.setattr("app.repository.hub.check_reachable", lambda url: None)
    repository = tmp_path / "models"
    with pytest.raises(CheckpointError, match=r"mvit fetch apple/mobilevitv2-0\.5-test"):
        resolve("apple/mobilevitv2-0.5-test", repository)
    assert fake.calls == []
    ensure_available("apple/mobilevitv2-0.5-test", repository, revision="abc123")
    resolved = resolve("apple/mobilevitv2-0.5-test", repository)
    assert resolved.path == hub_folder(repository, "apple/mobilevitv2-0.5-test")
    assert resolved.path == repository / "hub" / "apple--mobilevitv2-0.5-test"
    assert resolved.model_id == "apple/mobilevitv2-0.5-test" and not resolved.random_weights
    assert resolved.weights.name == "pytorch_model.bin"  # safetensors was tried first, then the .bin
    assert [c[1] for c in fake.calls] == [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "pytorch_model.bin",
    ]
    assert {c[2] for c in fake.calls} == {"abc123"}
    fake.calls.clear()
    ensure_available("apple/mobilevitv2-0.5-test", repository, revision="abc123")
    assert resolve("apple/mobilevitv2-0.5-test", repository).path == resolved.path
    assert fake.calls == []  # served from the repository, no second download


def test_offline_hub_download_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    monkeypatch.setattr("app.repository.hub.check_reachable", lambda url: None)
    with pytest.raises(CheckpointError) as err:
        ensure_available("apple/mobilevitv2-1.0-imagenet1k-256", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "could not download 'apple/mobilevitv2-1.0-imagenet1k-256'" in message
    assert "`mvit demo-models models/ && mvit serve`" in message


def test_unknown_source() -> None:
    with pytest.raises(CheckpointError, match="neither a model folder nor a Hugging Face Hub id"):
        resolve("not a model", Path("/nonexistent"))


def test_broken_folders_are_explained(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_model_dir(folder)
    config = json.loads((model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "2": "b"}}))
    with pytest.raises(CheckpointError, match=r"keys are not 0\.\.1"):
        _ = read_model_dir(folder).labels
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["ResNet"]}))
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no supported architecture"):
        _ = read_model_dir(folder).task
    for weights in [folder / "model.safetensors", *folder.glob("*.onnx")]:  # other tests may have exported
        weights.unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        read_model_dir(folder)


def test_a_fetched_hub_folder_holding_only_onnx_exports_resolves(model_dir: Path, tmp_path: Path) -> None:
    """What an edge box holds: `mvit fetch` + `mvit export` elsewhere, the PyTorch weights left behind."""
    folder = hub_folder(tmp_path, "apple/mobilevitv2-0.5-test")
    folder.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(model_dir / name, folder / name)
    (folder / "model.onnx").write_bytes(b"an export")
    resolved = resolve("apple/mobilevitv2-0.5-test", tmp_path)
    assert (
        resolved.path == folder
        and resolved.weights is None
        and resolved.model_id == "apple/mobilevitv2-0.5-test"
    )
