"""`mvit compare` on exported demo models: one line per backend against the reference, accuracy and the
profiles side by side on a labelled folder; its failures are one line (exit 1) or a usage error (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.cli import main
from tests.support import encode, photo_with_shapes


def images(folder: Path, count: int, subfolders: tuple[str, ...] = ("",)) -> Path:
    """`count` photos in each of `subfolders` of `folder` ("" for none: an unlabelled folder)."""
    for i, name in enumerate(subfolders):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j in range(count):
            (folder / name / f"{j}.png").write_bytes(encode(photo_with_shapes(400, 300, 10 * i + j), "PNG"))
    return folder


def lines_of(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """The report's lines by their first word (the backend, or `profile`/`profiles` with the next)."""
    found: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        words = line.split()
        found[" ".join(words[:2]) if words[0].startswith("profile") else words[0].rstrip(":")] = line
    return found


def tolerance_shares(line: str) -> list[float]:
    return [float(share) for share in re.findall(r"\(([\d.]+) of the parity tolerance", line)]


def test_a_classifier_on_a_labelled_folder(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = exported["image-classification"]
    labelled = images(tmp_path / "val", 2, ("281", "285"))  # subfolders named by class index
    argv = ["compare", str(folder), str(labelled), "--backends", "onnx-int8", "onnx-fp32", "torch"]
    assert main(argv) == 0
    report = lines_of(capsys)
    assert report["onnx-int8"].startswith("onnx-int8: not compared (")  # no model.int8.onnx
    assert report["4"] == f"4 images from {labelled}; reference: torch"  # torch first, whatever the order
    torch, onnx = report["torch"], report["onnx-fp32"]
    assert "max |output - torch|: logits 0.00e+00 (0.00 of the parity tolerance" in torch
    assert "top-1 agreement 100.0%; max |prob diff| 0.00e+00; top-1 accuracy " in torch
    # The export gate holds ONNX Runtime fp32 within the tolerance on its own inputs; on other photos the two
    # runtimes' different summation orders stay within a small multiple of it (1.23 on these).
    assert tolerance_shares(onnx)[0] <= 2 and "top-1 agreement 100.0%" in onnx
    accuracy = re.search(r"top-1 accuracy ([\d.]+)%", torch)
    assert accuracy is not None and 0 <= float(accuracy[1]) <= 100
    assert {"profile trained", "profile hf", "profiles trained"} <= set(report)
    assert report["profile trained"].startswith("profile trained  (torch): top-1 accuracy ")
    assert re.fullmatch(
        r"profiles trained and hf agree on top-1 for [\d.]+% of images", report["profiles trained"]
    )


@pytest.mark.parametrize(
    ("task", "decisions"),
    [("image-segmentation", "label-map cells agreeing "), ("object-detection", "detections above 0.5: ")],
)
def test_segmenters_and_detectors_compare_their_decisions(
    task: str, decisions: str, exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unlabelled = images(tmp_path / "photos", 2)
    (unlabelled / "notes.txt").write_text("not an image")
    assert main(["compare", str(exported[task]), str(unlabelled), "--backends", "torch", "onnx-fp32"]) == 0
    report = lines_of(capsys)
    assert report["2"] == f"2 images from {unlabelled}; reference: torch"
    assert set(report) == {"2", "torch", "onnx-fp32"}  # unlabelled: no accuracy, no profiles
    for name in ("torch", "onnx-fp32"):
        assert decisions in report[name] and "accuracy" not in report[name]
        assert all(share <= 1 for share in tolerance_shares(report[name]))


def test_what_it_cannot_compare_is_one_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(*args: str) -> str:
        assert main(["compare", *map(str, args)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mvit compare: ") and err.count("\n") == 1, err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert "is neither a model folder" in fails(tmp_path / "no-model", empty)
    assert fails(model_dir, empty, "--backends", "torch") == f"mvit compare: no images in {empty}\n"
    assert "nowhere" in fails(model_dir, tmp_path / "nowhere", "--backends", "torch")
    assert fails(model_dir, empty, "--backends", "onnx-int8").endswith("no backend could load the model\n")
    unmappable = images(tmp_path / "classes", 1, ("cats", "dogs"))
    assert "cannot map the 2 subfolders" in fails(model_dir, unmappable, "--backends", "torch")


def test_an_unknown_backend_is_a_usage_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(model_dir), str(tmp_path), "--backends", "torch", "onnx-fp16"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mvit compare") and "invalid choice: 'onnx-fp16'" in err
