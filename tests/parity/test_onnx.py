"""ONNX export and the ONNX Runtime backend: parity with PyTorch, metadata, caching, staleness, INT8."""

from __future__ import annotations

import base64
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from app.backends import parity
from app.backends.onnx_backend import CACHE_DIR, _cache_path, load_onnx_backend
from app.backends.onnx_export import export_onnx, read_metadata, set_metadata
from app.backends.torch_backend import load_torch_backend
from app.cli import main
from app.intake.decode import decode_image
from app.intake.preprocess import preprocess
from app.repository import CheckpointError, file_sha256, read_model_dir
from app.runtime.pipeline import predict
from app.tools.demo_models import write_demo_model
from app.tools.quantize import quantize_int8
from tests.support import (
    TASKS,
    batch_for,
    copy_model,
    encode,
    load_served,
    make_settings,
    photo_like,
    photo_with_shapes,
)


@pytest.mark.parametrize("task", TASKS)
def test_onnx_runtime_matches_pytorch(exported: dict[str, Path], task: str) -> None:
    model_dir = read_model_dir(exported[task])
    settings = make_settings(model_dir.path, backend="onnx", onnx_auto_export=False)
    batch = batch_for(model_dir.path)
    expected = load_torch_backend(model_dir).infer(batch)
    got = load_onnx_backend(model_dir, settings).infer(batch)
    assert (
        set(got)
        == set(expected)
        == ({"logits", "box_regression"} if task == "object-detection" else {"logits"})
    )
    assert not parity.parity_problems(expected, got)
    for reference in expected.values():
        # Non-degenerate: the outputs spread, and depend on the image far beyond the tolerance.
        assert reference.std() > 0.1
        assert np.abs(reference[0] - reference[1]).max() > 10 * parity.tolerance(reference)


def test_batch_dimension_is_dynamic(exported: dict[str, Path]) -> None:
    model_dir = read_model_dir(exported["image-classification"])
    backend = load_onnx_backend(model_dir, make_settings(model_dir.path, backend="onnx"))
    batch = batch_for(model_dir.path, count=5)
    together = backend.infer(batch)["logits"]
    alone = np.concatenate([backend.infer(batch[i : i + 1])["logits"] for i in range(5)])
    assert together.shape == (5, 1000)
    assert not parity.parity_problems({"logits": alone}, {"logits": together})


def test_export_carries_its_description(exported: dict[str, Path]) -> None:
    folder = exported["object-detection"]
    model_dir = read_model_dir(folder)
    model = onnx.load(str(folder / "model.onnx"))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["logits", "box_regression"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 320, 320]
    meta = read_metadata(folder / "model.onnx")
    assert meta["mvit.task"] == "object-detection"
    assert meta["mvit.labels"].startswith('["background", "person"')
    assert '"resample": 2' in meta["mvit.preprocessing"]
    assert meta["mvit.source_sha256"] == file_sha256(model_dir.weights)
    assert meta["mvit.source_weights"] == "model.safetensors"


def masks_to_label_map(result: list[dict], labels: list[str]) -> np.ndarray:
    first = Image.open(io.BytesIO(base64.b64decode(result[0]["mask"])))
    label_map = np.full((first.height, first.width), -1)
    for entry in result:
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["mask"])))) > 0
        label_map[mask] = labels.index(entry["label"])
    assert (label_map >= 0).all()
    return label_map


@pytest.mark.parametrize("task", ("image-classification", "object-detection"))
def test_same_answers_end_to_end(exported: dict[str, Path], task: str) -> None:
    folder = exported[task]
    image = encode(photo_with_shapes(640, 480, seed=11), quality=90)
    torch_model = load_served(folder)
    onnx_model = load_served(folder, backend="onnx", onnx_auto_export=False)
    assert onnx_model.backend.name == "onnx" and onnx_model.backend.artifact == "model.onnx"
    # a low threshold, so that many detections are compared, not only the handful above 0.5
    parameters = {"threshold": 0.05} if task == "object-detection" else {}
    expected = predict(torch_model, image, parameters, 50_000_000)
    got = predict(onnx_model, image, parameters, 50_000_000)
    assert len(got) == len(expected) > 1
    for a, b in zip(got, expected, strict=True):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a.get("box") == b.get("box")


def test_same_masks_end_to_end_except_at_exact_ties(exported: dict[str, Path]) -> None:
    """Logits agree within the parity tolerance, so an argmax can only differ where the top two classes are
    closer than that."""
    folder = exported["image-segmentation"]
    data = encode(photo_like(640, 480, seed=11), quality=90)
    torch_model = load_served(folder)
    onnx_model = load_served(folder, backend="onnx", onnx_auto_export=False)
    expected = predict(torch_model, data, {}, 50_000_000)
    got = predict(onnx_model, data, {}, 50_000_000)
    assert [r["label"] for r in got] == [r["label"] for r in expected] and len(got) > 1
    labels = torch_model.labels
    differ = masks_to_label_map(got, labels) != masks_to_label_map(expected, labels)
    assert differ.sum() <= 1e-4 * differ.size

    image = decode_image(data, 50_000_000)
    logits = torch_model.backend.infer(preprocess(image, torch_model.preprocessing)[None])["logits"]
    dense = torch.nn.functional.interpolate(
        torch.from_numpy(logits), size=(image.height, image.width), mode="bilinear"
    )[0].numpy()
    top2 = np.sort(dense[:, differ], axis=0)[-2:]
    assert (top2[1] - top2[0] < 2 * parity.tolerance(logits)).all()


def test_exports_on_first_start_and_caches_the_optimized_graph(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    folder = copy_model(exported["image-classification"], tmp_path)
    (folder / "model.onnx").unlink()
    settings = make_settings(folder, backend="onnx")
    batch = batch_for(folder, count=1)
    first = load_onnx_backend(read_model_dir(folder), settings).infer(batch)["logits"]
    assert (folder / "model.onnx").is_file()
    cached = list((folder / CACHE_DIR).iterdir())
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = load_onnx_backend(read_model_dir(folder), settings).infer(batch)["logits"]
    assert list((folder / CACHE_DIR).iterdir()) == cached and cached[0].stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_an_export_of_other_weights_is_redone_or_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(exported["image-classification"], tmp_path)
    other = write_demo_model(tmp_path / "other", "image-classification", width=0.5, seed=99)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")  # e.g. a re-fetch
    with pytest.raises(CheckpointError, match="exported from other weights"):
        load_onnx_backend(
            read_model_dir(folder), make_settings(folder, backend="onnx", onnx_auto_export=False)
        )
    model_dir = read_model_dir(folder)
    backend = load_onnx_backend(model_dir, make_settings(folder, backend="onnx"))
    assert backend.metadata["mvit.source_sha256"] == file_sha256(folder / "model.safetensors")
    batch = batch_for(folder, count=2)
    expected = load_torch_backend(model_dir).infer(batch)
    assert not parity.parity_problems(expected, backend.infer(batch))


def test_onnx_only_folder_serves_with_onnx_and_is_refused_by_torch(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    folder = copy_model(exported["image-segmentation"], tmp_path, onnx_only=True)
    model = load_served(folder, backend="onnx")
    result = predict(model, encode(photo_like(300, 200)), {}, 50_000_000)
    assert result and all(r["mask"] for r in result)
    with pytest.raises(CheckpointError, match="no PyTorch weights"):
        load_served(folder)


def test_missing_export_without_torch_says_what_to_do(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_model(exported["image-classification"], tmp_path)
    (folder / "model.onnx").unlink()
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if not installed
    monkeypatch.delitem(sys.modules, "app.backends.onnx_export", raising=False)
    with pytest.raises(CheckpointError, match=r"cannot export \(no torch\)\. Run `mvit export"):
        load_onnx_backend(read_model_dir(folder), make_settings(folder, backend="onnx"))
    with pytest.raises(CheckpointError, match="run `mvit export"):
        load_onnx_backend(
            read_model_dir(folder), make_settings(folder, backend="onnx", onnx_auto_export=False)
        )


@pytest.mark.parametrize(
    ("instances", "allow_spinning", "lone", "concurrent"),
    [(2, False, "1", "0"), (1, False, "0", "0"), (2, True, "1", "1")],
)
def test_only_the_all_threads_session_spins_by_default(
    exported: dict[str, Path], instances: int, allow_spinning: bool, lone: str, concurrent: str
) -> None:
    folder = exported["image-classification"]
    settings = make_settings(folder, backend="onnx", instances=instances, onnx_allow_spinning=allow_spinning)
    backend = load_onnx_backend(read_model_dir(folder), settings)

    def spins(session: object) -> str:
        options = session.get_session_options()  # type: ignore[attr-defined]
        return str(options.get_session_config_entry("session.intra_op.allow_spinning"))

    assert backend.instances == instances
    assert (spins(backend.session), spins(backend.instance_session)) == (lone, concurrent)


def test_unavailable_execution_provider_is_refused_clearly(exported: dict[str, Path]) -> None:
    folder = exported["image-classification"]
    with pytest.raises(
        CheckpointError, match=r"CUDAExecutionProvider is not installed here \(available: .*CPU"
    ):
        load_onnx_backend(read_model_dir(folder), make_settings(folder, backend="onnx", device="cuda"))
    with pytest.raises(CheckpointError, match="TensorrtExecutionProvider"):
        load_onnx_backend(
            read_model_dir(folder),
            make_settings(folder, backend="onnx", onnx_providers="TensorrtExecutionProvider"),
        )


def test_int8_exports_quantize_and_stay_close_to_fp32(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(exported["image-classification"], tmp_path)
    with pytest.raises(CheckpointError, match="--quantize int8"):
        load_served(folder, backend="onnx", onnx_precision="int8")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for seed in range(4):
        photo_like(400, 300, seed=20 + seed).save(calibration / f"{seed}.jpg", quality=90)
    model_dir = read_model_dir(folder)
    path = quantize_int8(model_dir, calibration, count=4)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = read_metadata(path)
    assert (
        meta["mvit.quantization"].startswith("int8 static QDQ")
        and meta["mvit.quantizer"] == "onnxruntime"
        and meta["mvit.task"] == "image-classification"
    )

    batch = batch_for(folder, count=3)
    fp32 = load_onnx_backend(model_dir, make_settings(folder, backend="onnx")).infer(batch)["logits"]
    int8_model = load_served(folder, backend="onnx", onnx_precision="int8")
    assert int8_model.backend.artifact == "model.int8.onnx"
    assert int8_model.describe()["precision"] == "int8"
    int8 = int8_model.backend.infer(batch)["logits"]
    assert not np.allclose(int8, fp32, atol=1e-4)  # really quantized
    assert np.corrcoef(int8.ravel(), fp32.ravel())[0, 1] > 0.7  # and still the same function, roughly

    dynamic = quantize_int8(model_dir, None)
    assert read_metadata(dynamic)["mvit.quantization"].startswith("int8 dynamic")


def test_onnx_runtime_warns_about_an_nncf_quantized_file(
    exported: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NNCF's files run slower than fp32 on ONNX Runtime; the file's metadata says who quantized it."""
    folder = copy_model(exported["image-classification"], tmp_path)
    model_dir = read_model_dir(folder)
    path = quantize_int8(model_dir, None)
    with caplog.at_level("WARNING"):
        load_onnx_backend(model_dir, make_settings(folder, backend="onnx", onnx_precision="int8"))
    assert "NNCF" not in caplog.text
    set_metadata(path, {**read_metadata(path), "mvit.quantizer": "nncf"})
    with caplog.at_level("WARNING"):
        load_onnx_backend(model_dir, make_settings(folder, backend="onnx", onnx_precision="int8"))
    assert "quantized with NNCF for OpenVINO" in caplog.text and "--backend openvino" in caplog.text


def test_cli_export(exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_model(exported["object-detection"], tmp_path)
    (folder / "model.onnx").unlink()
    assert main(["export", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "model.onnx")
    assert main(["export", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mvit export: ") and "neither a model folder" in err and "\n" not in err
    with pytest.raises(SystemExit) as usage_error:  # a flag's value: the command's usage, exit 2
        main(["export", str(folder), "--quantize", "int8", "--calibration", str(tmp_path / "none")])
    assert usage_error.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mvit export") and "not a folder of images" in err


def test_opset_18_goes_through_torch_export(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(exported["image-classification"], tmp_path)
    model_dir = read_model_dir(folder)
    path = export_onnx(model_dir, opset=18)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [18]
    batch = batch_for(folder, count=2)
    expected = load_torch_backend(model_dir).infer(batch)
    got = load_onnx_backend(model_dir, make_settings(folder, backend="onnx")).infer(batch)
    assert not parity.parity_problems(expected, got)


@pytest.mark.parametrize("blocker", ["cache folder is a file", "cache file is a folder"])
def test_serves_without_the_cache_when_it_cannot_be_written(
    exported: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, blocker: str
) -> None:
    """As a read-only or full repository would (root, which runs the tests, can write anywhere)."""
    folder = copy_model(exported["image-classification"], tmp_path)
    if blocker == "cache folder is a file":
        (folder / CACHE_DIR).write_text("")
    else:
        _cache_path(folder / "model.onnx").mkdir(parents=True)  # ONNX Runtime fails to write there
    backend = load_onnx_backend(read_model_dir(folder), make_settings(folder, backend="onnx"))
    assert backend.infer(batch_for(folder, count=1))["logits"].shape == (1, 1000)
    assert "continuing without" in caplog.text


def scale_classifier(folder: Path, factor: float) -> None:
    """Multiply the classifier's weights and bias: logits `factor` times larger, the same function otherwise."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    for key in ("classifier.weight", "classifier.bias"):
        state[key] = state[key] * factor
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_export_accepts_logits_ten_times_larger(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(exported["image-classification"], tmp_path)
    (folder / "model.onnx").unlink()
    batch = batch_for(folder)
    small = load_torch_backend(read_model_dir(folder)).infer(batch)["logits"]
    scale_classifier(folder, 40.0)
    model_dir = read_model_dir(folder)
    export_onnx(model_dir)  # not refused
    expected = load_torch_backend(model_dir).infer(batch)
    got = load_onnx_backend(model_dir, make_settings(folder, backend="onnx", onnx_auto_export=False)).infer(
        batch
    )
    assert np.abs(expected["logits"]).max() > 10 * np.abs(small).max()
    assert not parity.parity_problems(expected, got)
    assert (expected["logits"].argmax(-1) == got["logits"].argmax(-1)).all()


@pytest.mark.parametrize("defect", ["weight off by 0.1%", "SiLU replaced by ReLU in one block"])
def test_export_refuses_an_injected_defect(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defect: str
) -> None:
    """The gate is no formality: the graph it checks is made wrong on purpose, and the export refused."""
    import torch

    folder = copy_model(exported["image-classification"], tmp_path)
    (folder / "model.onnx").unlink()
    exporter = export_onnx.__globals__  # the module of the very function called (another test re-imports it)
    faithful = exporter["_for_export"]

    def broken(net: torch.nn.Module) -> torch.nn.Module:
        net = faithful(net)
        if defect.startswith("weight"):
            conv = net.mobilevitv2.encoder.layer[3].conv_1x1.convolution
            with torch.no_grad():
                conv.weight.mul_(1.001)
        else:
            block = net.mobilevitv2.encoder.layer[2].conv_kxk
            block.activation = torch.nn.ReLU()
        return net

    monkeypatch.setitem(exporter, "_for_export", broken)
    with pytest.raises(CheckpointError, match="is not PyTorch's function"):
        export_onnx(read_model_dir(folder))
    assert not (folder / "model.onnx").exists()
    assert not list(folder.glob(".*.tmp.onnx"))
