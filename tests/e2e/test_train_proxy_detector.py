"""benchmarks/train_proxy_detector.py at a tiny size: it trains, is deterministic, and writes a detector that
serves; its matching and mAP are checked on cases worked out by hand. (Its real run, ~11 minutes, is in
docs/performance.md; CI spends seconds here.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.runtime.pipeline import predict
from benchmarks.train_proxy_detector import CLASSES, assign, average_precision, draw_scene
from tests.support import encode, load_served, run_benchmark


def train(out: Path) -> Path:
    result = run_benchmark(
        "train_proxy_detector",
        str(out),
        "--image-size",
        "64",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--held-out-scenes",
        "8",
    )
    assert "mAP@0.5" in result.stdout
    return out / "proxy-mobilevitv2-0.5-shapes-ssdlite-64"


def test_the_proxy_detector_trains_deterministically_and_serves(tmp_path: Path) -> None:
    folder = train(tmp_path / "a")
    again = train(tmp_path / "b")
    assert (folder / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["random_weights"] is False and 0 <= manifest["held_out"]["map50"] <= 1
    model = load_served(folder)
    image, _, _ = draw_scene(7, 64)
    answer = predict(model, encode(image, "PNG"), {"threshold": 0.0}, 10**8)
    assert answer and {entry["label"] for entry in answer} <= set(CLASSES)


def test_scenes_are_functions_of_their_index() -> None:
    first, boxes, labels = draw_scene(3, 128)
    second, same_boxes, same_labels = draw_scene(3, 128)
    assert first.tobytes() == second.tobytes()
    assert np.array_equal(boxes, same_boxes) and np.array_equal(labels, same_labels)
    assert ((boxes[:, 2:] > boxes[:, :2]) & (boxes >= 0).all() & (boxes <= 1).all()).all()
    assert set(labels.tolist()) <= set(range(1, len(CLASSES) + 1))


def test_matching_takes_overlapping_anchors_and_each_objects_best() -> None:
    anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.3, 0.3, 0.5, 0.5], [0.75, 0.75, 0.1, 0.1]], np.float32)
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 1.0, 1.0]], np.float32)
    classes, offsets = assign(anchors, boxes, np.array([2, 5]), 0.1, 0.2)
    # anchor 1 overlaps object 0 at IoU 0.68 (> 0.5); anchor 2 overlaps object 1 at only 0.06 but is its
    # best anchor, so it is taken anyway
    assert classes.tolist() == [2, 2, 5]
    assert offsets[0] == pytest.approx([0, 0, 0, 0], abs=1e-6)
    assert offsets[1] == pytest.approx([-1.0, -1.0, 0, 0], abs=1e-5)  # 0.05 / (0.1 * 0.5)
    assert offsets[2][2:] == pytest.approx([np.log(4) / 0.2] * 2, rel=1e-5)


def test_average_precision_on_worked_cases() -> None:
    truth = [(np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]], np.float32), np.array([1, 1]))]
    boxes, labels = truth[0][0], np.array([1, 1])
    assert average_precision([(boxes, np.array([0.9, 0.8]), labels)], truth, 1) == pytest.approx(1.0)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, int))
    assert average_precision([empty], truth, 1) == 0.0
    # a confident miss first, then one of the two objects: precision 1/2 at recall 1/2
    miss = np.array([[0.0, 0.6, 0.1, 0.7], boxes[0]], np.float32)
    assert average_precision([(miss, np.array([0.9, 0.8]), labels)], truth, 1) == pytest.approx(0.25)
    # a duplicate of a found object is a false positive, not a second hit
    duplicate = np.array([boxes[0], boxes[0]], np.float32)
    assert average_precision([(duplicate, np.array([0.9, 0.8]), labels)], truth, 1) == pytest.approx(0.5)
    # the wrong class finds nothing
    assert average_precision([(boxes, np.array([0.9, 0.8]), np.array([2, 2]))], truth, 2) == 0.0
