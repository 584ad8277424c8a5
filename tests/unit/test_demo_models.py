"""Demo classifiers answer like trained ones (app/tools/calibrate.py): logits of a trained-like scale that
depend on the photo as much as on the class, and a winner that changes from photo to photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.runtime.models import load_model
from app.runtime.pipeline import prepare
from app.tools.demo_models import write_demo_model
from tests.support import encode, make_settings, photo_like


@pytest.fixture(scope="module")
def logits(model_dir: Path) -> np.ndarray:
    """(photos, classes) logits of the session's demo classifier on 8 photos it was not calibrated on."""
    model = load_model(str(model_dir), make_settings(model_dir))
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
