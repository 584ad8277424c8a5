"""Demo models answer like trained ones (app/tools/calibrate.py). Classifiers: logits of a trained-like
scale that depend on the photo as much as on the class, and a winner that changes from photo to photo.
Segmenters: maps of coherent regions of several classes whose foreground overlaps the shapes of unseen
scenes. Detectors: a handful of confident boxes per photo, out of a trained-like number of candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.runtime.pipeline import predict, prepare
from app.tasks.detection import DEFAULT_THRESHOLD
from app.tools.calibrate import procedural_photos, procedural_scenes
from app.tools.demo_models import write_demo_model
from benchmarks.demo_model_stats import detections, foreground_overlap, region_stats
from tests.support import encode, load_served, photo_like

# Each writes or loads demo models of all three tasks (about 25 s on 2 cores the first time).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logits(model_dir: Path) -> np.ndarray:
    """(photos, classes) logits of the session's demo classifier on 8 photos it was not calibrated on."""
    model = load_served(model_dir)
    photos = [encode(photo_like(640, 480, seed=100 + i)) for i in range(8)]
    return np.stack([model.backend.infer(prepare(model, p, 10**8).tensor[None])["logits"][0] for p in photos])


def test_logits_have_a_trained_like_scale(logits: np.ndarray) -> None:
    largest = np.abs(logits).max(axis=1)
    assert (largest >= 5).all() and (largest <= 25).all(), largest


def test_logits_depend_on_the_photo_as_much_as_on_the_class(logits: np.ndarray) -> None:
    over_photos = logits.std(axis=0).mean()  # how a class's logit moves from photo to photo
    over_classes = logits.std(axis=1).mean()  # how classes differ on one photo
    assert 0.3 <= over_photos / over_classes <= 3, (over_photos, over_classes)
    assert len(set(logits.argmax(axis=1).tolist())) >= 4  # the winner changes from photo to photo


def test_calibration_is_deterministic(tmp_path: Path, model_dir: Path) -> None:
    again = write_demo_model(tmp_path, "image-classification", width=0.5, seed=0)
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def scene_maps(seg_model_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The session's demo segmenter's label maps (at the logits' resolution) on 4 procedural scenes it
    was not fitted on, and the scenes' true class maps at the same resolution."""
    model = load_served(seg_model_dir)
    size = int(model.model_dir.config["image_size"])
    scenes = list(procedural_scenes(4, len(model.labels), size, seed=1000))
    maps = [
        model.backend.infer(prepare(model, encode(image), 10**8).tensor[None])["logits"][0].argmax(axis=0)
        for image, _ in scenes
    ]
    step = size // maps[0].shape[0]
    return maps, [regions[step // 2 :: step, step // 2 :: step] for _, regions in scenes]


def test_segmentation_maps_are_coherent_regions_of_several_classes(
    scene_maps: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    for label_map in scene_maps[0]:
        classes, agreement = region_stats(label_map)
        assert classes >= 3 and agreement >= 0.75, (classes, agreement)


def test_segmentation_foreground_overlaps_the_shapes(
    scene_maps: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    overlaps = [foreground_overlap(m, t) for m, t in zip(*scene_maps, strict=True)]
    assert np.mean(overlaps) >= 0.15, overlaps


def test_segmentation_answers_name_a_handful_of_classes_per_photo(seg_model_dir: Path) -> None:
    """As a trained VOC model's do (2-4), not a label soup (fitted to all 20 classes: 10-16 per photo)."""
    model = load_served(seg_model_dir)
    counts = [len(predict(model, encode(photo), {}, 10**8)) for photo in procedural_photos(4, seed=1000)]
    assert 2 <= np.mean(counts) <= 5 and max(counts) <= 6, counts


@pytest.fixture(scope="module")
def found(det_model_dir: Path) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The session's demo detector on 8 procedural photos it was not calibrated on: per photo, the labels
    and scores of its detections above the default threshold, and its candidates above cvnets' floor."""
    model = load_served(det_model_dir)
    results = []
    for photo in procedural_photos(8, seed=1000):
        found, candidates = detections(model, encode(photo))
        confident = found.above(DEFAULT_THRESHOLD)
        results.append((confident.labels, confident.scores, candidates))
    return results


def test_detectors_find_a_handful_of_confident_boxes(found: list[tuple[np.ndarray, np.ndarray, int]]) -> None:
    counts = [len(labels) for labels, _, _ in found]
    assert 1 <= np.mean(counts) <= 8 and max(counts) <= 20, counts  # seeded weights alone: 200 on every photo
    assert sum(count > 0 for count in counts) >= 5, counts


def test_detector_candidates_are_trained_like(found: list[tuple[np.ndarray, np.ndarray, int]]) -> None:
    # A trained SSD puts hundreds to a few thousand (anchor, class) pairs above the 0.01 floor; seeded
    # weights alone put ~38,000 there, a flat softmax.
    candidates = [n for _, _, n in found]
    assert np.median(candidates) >= 20 and max(candidates) <= 5_000, candidates


def test_detections_change_from_photo_to_photo(found: list[tuple[np.ndarray, np.ndarray, int]]) -> None:
    labels = [tuple(sorted(labels.tolist())) for labels, _, _ in found if len(labels)]
    assert len(set(labels)) >= 3, labels
