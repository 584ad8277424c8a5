"""`mvit fetch` (Hub and ml-cvnets, verified, atomic, offline-clear) and the repository's models.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from app.cli import main
from app.repository import CheckpointError
from app.repository.hub import HUB_REVISIONS
from app.repository.models_yaml import REPOSITORY_FILE, served_models
from app.tools.fetch import DEFAULT_MODELS, cvnets_catalog
from tests.support import CVNETS_FIXTURES, FakeHub, copy_model, hub_like, make_settings, serving


@pytest.fixture(autouse=True)
def network_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The downloads are faked per test; the DNS pre-check must not depend on this machine's network."""
    monkeypatch.setattr("app.repository.hub.check_reachable", lambda url: None)
    monkeypatch.setattr("app.tools.fetch.check_reachable", lambda url: None)


def test_an_unresolvable_host_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from app.tools import fetch

    monkeypatch.undo()

    def no_dns(host: str, port: int, *args: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError, match=r"cannot reach huggingface.co \(Name or service not known\)"):
        fetch.fetch("apple/mobilevitv2-1.0-imagenet1k-256", tmp_path)
    assert main(["fetch", "coco-ssd-mobilevitv2-1.0", "--model-repository", str(tmp_path)]) == 1
    assert "cannot reach docs-assets.developer.apple.com" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def leftovers(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.rglob("*") if ".partial-" in p.name)


def test_fetch_from_the_hub_verifies_and_registers(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeHub(
        hub_like(model_dir, tmp_path), {"config.json", "preprocessor_config.json", "pytorch_model.bin"}
    )
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    repository = tmp_path / "models"
    assert main(["fetch", "apple/mobilevitv2-1.0-voc-deeplabv3", "--model-repository", str(repository)]) == 0
    assert capsys.readouterr().out.strip() == str(repository / "hub" / "apple--mobilevitv2-1.0-voc-deeplabv3")
    assert {rev for _, _, rev in fake.calls} == {HUB_REVISIONS["apple/mobilevitv2-1.0-voc-deeplabv3"]}
    entries = served_models(make_settings(model_dir, models=[], model_repository=repository))
    assert [e.name for e in entries] == ["apple/mobilevitv2-1.0-voc-deeplabv3"]
    assert leftovers(repository) == []
    manifest = json.loads(
        (repository / "hub" / "apple--mobilevitv2-1.0-voc-deeplabv3" / "manifest.json").read_text()
    )
    assert manifest == {
        "source": "https://huggingface.co/apple/mobilevitv2-1.0-voc-deeplabv3",
        "revision": HUB_REVISIONS["apple/mobilevitv2-1.0-voc-deeplabv3"],
        "training_pipeline": "ml-cvnets",
        "preprocessing_profile": "trained",
        "fetched_by": "mvit fetch",
    }
    # Again, with an explicit revision: replaced in place, listed once.
    assert (
        main(
            [
                "fetch",
                "apple/mobilevitv2-1.0-voc-deeplabv3",
                "--model-repository",
                str(repository),
                "--hub-revision",
                "abc",
            ]
        )
        == 0
    )
    assert fake.calls[-1][2] == "abc"
    assert (repository / REPOSITORY_FILE).read_text().count("voc-deeplabv3") == 1


def test_a_download_that_does_not_match_its_config_is_not_kept(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = hub_like(model_dir, tmp_path)
    config = json.loads((upstream / "config.json").read_text())
    config["width_multiplier"] = 1.0  # the weights are width 0.5
    (upstream / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(
        "huggingface_hub.hf_hub_download",
        FakeHub(upstream, {"config.json", "preprocessor_config.json", "pytorch_model.bin"}),
    )
    repository = tmp_path / "models"
    assert main(["fetch", "apple/x", "--model-repository", str(repository)]) == 1
    err = capsys.readouterr().err
    assert "does not match a MobileViTv2 width 1.0" in err and "Traceback" not in err
    assert not (repository / "hub" / "apple--x").exists() and leftovers(repository) == []
    assert not (repository / REPOSITORY_FILE).exists()


def test_offline_fetch_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("Cannot reach the Hub:\nconnection refused")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    repository = tmp_path / "models"
    assert main(["fetch", "--model-repository", str(repository)]) == 1  # the defaults
    err = capsys.readouterr().err.strip()
    assert main(["fetch", "default", "--model-repository", str(repository)]) == 1  # what the image bakes
    assert capsys.readouterr().err.strip() == err
    assert err.startswith("mvit fetch: could not download 'apple/mobilevitv2-1.0-imagenet1k-256'")
    assert "\n" not in err and "Check the network" in err
    assert (
        leftovers(repository) == []
        and not (repository / "hub" / "apple--mobilevitv2-1.0-imagenet1k-256").exists()
    )

    def unreachable(request: object, timeout: float) -> object:
        import urllib.error

        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    assert main(["fetch", "coco-ssd-mobilevitv2-1.0", "--model-repository", str(repository)]) == 1
    err = capsys.readouterr().err.strip()
    assert "could not download https://docs-assets.developer.apple.com/" in err and "\n" not in err
    assert leftovers(repository) == [] and list(repository.iterdir()) == []


def test_unknown_name_lists_what_is_known(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "mobilevitv3", "--model-repository", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'mobilevitv3'" in err and "coco-ssd-mobilevitv2-0.75" in err


def test_catalog_covers_every_width_and_the_defaults() -> None:
    catalog = cvnets_catalog()
    for width in ("0.5", "0.75", "1.0", "1.25", "1.5", "1.75", "2.0"):
        assert f"mobilevitv2-{width}-imagenet1k-256" in catalog
        assert catalog[f"mobilevitv2-{width}-imagenet1k-384"].image_size == 384
        assert catalog[f"coco-ssd-mobilevitv2-{width}"].url.endswith(f"/coco-ssd-mobilevitv2-{width}.pt")
    assert DEFAULT_MODELS[2] in catalog and all("/" in name for name in DEFAULT_MODELS[:2])


@pytest.mark.usefixtures("cvnets_fixtures")
def test_fetch_from_cvnets_converts_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(CVNETS_FIXTURES / "ssdlite_mobilevitv2_0.5_coco" / "state_dict.safetensors"))

    def download(url: str, destination: Path) -> None:
        assert url.endswith("/detection/mobilevitv2/coco-ssd-mobilevitv2-0.5.pt")
        torch.save(state, destination)  # as Apple ships them

    monkeypatch.setattr("app.tools.fetch._download", download)
    repository = tmp_path / "models"
    assert main(["fetch", "coco-ssd-mobilevitv2-0.5", "--model-repository", str(repository)]) == 0
    folder = repository / "cvnets-mobilevitv2-0.5-coco-ssdlite"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["task"] == "object-detection" and manifest["source"].startswith("https://docs-assets")
    assert manifest["training_pipeline"] == "ml-cvnets"
    assert leftovers(repository) == []
    assert [e.name for e in served_models(make_settings(folder, models=[], model_repository=repository))] == [
        folder.name
    ]


def test_models_yaml_chooses_models_backends_and_batching(
    model_dir: Path, det_model_dir: Path, tmp_path: Path, jpeg_bytes: bytes
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(model_dir, repository / "classifier")
    copy_model(det_model_dir, repository)
    (repository / REPOSITORY_FILE).write_text(
        "models:\n"
        "  - name: classifier\n"
        "    backend: onnx\n"
        "    max_batch_size: 2\n"
        "    max_queue_size: 3\n"
        "    max_queue_delay_ms: 1.5\n"
        "    instances: 2\n"
        "    preprocessing: trained\n"
        "  - name: mobilevitv2-0.5-coco-ssdlite-320-random\n"
    )
    with serving(repository / "classifier", models=[], model_repository=repository) as client:
        described = {m["id"]: m for m in client.get("/models").json()}
        assert described[model_dir.name]["backend"] == "onnx"
        assert described["mobilevitv2-0.5-coco-ssdlite-320-random"]["backend"] == "torch"
        assert client.post("/classify", content=jpeg_bytes).status_code == 200
        assert client.post("/detect", content=jpeg_bytes).status_code == 200
        classifier = described[model_dir.name]
        assert (classifier["max_batch_size"], classifier["max_queue_size"]) == (2, 3)
        assert (classifier["max_queue_delay_ms"], classifier["instances"]) == (1.5, 2)
        assert classifier["preprocessing"]["profile"] == "trained"
        detector = described["mobilevitv2-0.5-coco-ssdlite-320-random"]
        assert detector["preprocessing"]["profile"] == "hf"
        assert (detector["max_batch_size"], detector["max_queue_size"], detector["instances"]) == (8, 64, 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "models:\n  - name: a\n    backend: tensorflow\n",
            "models.0.backend: Input should be 'torch', 'onnx' or 'openvino'",
        ),
        ("models:\n  - name: a\n    batch: 4\n", "models.0.batch: Extra inputs are not permitted"),
        ("models:\n  - name: a\n  - name: a\n", "listed more than once: a"),
        ("models: []\n", "models: List should have at least 1 item"),
        (
            "models:\n  - name: a\n    max_batch_size: 0\n",
            "models.0.max_batch_size: Input should be greater than or equal to 1",
        ),
        (
            "models:\n  - name: a\n    max_queue_delay_ms: -1\n",
            "models.0.max_queue_delay_ms: Input should be greater than or equal to 0",
        ),
        ("models: [unclosed\n", "cannot be read as YAML"),
        ("", "models: Field required"),
    ],
)
def test_a_broken_models_yaml_stops_serve_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    (tmp_path / REPOSITORY_FILE).write_text(content)
    assert main(["serve", "--model-repository", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"mvit serve: {tmp_path / REPOSITORY_FILE}: ") and message in err and "\n" not in err
    )


def test_explicit_models_win_over_models_yaml(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / REPOSITORY_FILE).write_text("models:\n  - name: elsewhere\n")
    settings = make_settings(model_dir, model_repository=tmp_path)
    assert [e.name for e in served_models(settings)] == [str(model_dir)]
    (tmp_path / REPOSITORY_FILE).write_text("models: 3\n")
    with pytest.raises(CheckpointError):
        served_models(make_settings(model_dir, models=[], model_repository=tmp_path))
