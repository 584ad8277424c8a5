"""Preprocessing profiles (app/intake/profiles.py): `trained` against a reference written down from timm's
and torchvision's evaluation transforms; `hf` is the folder's own config, which test_preprocess.py holds
to transformers; and the default each kind of checkpoint gets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from app.intake.preprocess import Preprocessing, preprocess
from app.intake.profiles import choose, trained_preprocessing
from tests.support import photo_like

HUB_CLASSIFIER = Preprocessing.from_hf_config(
    {"size": 288, "crop_size": 256, "resample": 2, "do_flip_channel_order": True}
)
HUB_SEGMENTER = Preprocessing.from_hf_config(
    {"size": {"shortest_edge": 512}, "crop_size": {"height": 512, "width": 512}, "resample": 2}
)


def timm_eval(image: Image.Image, image_size: int, crop_pct: float) -> np.ndarray:
    """timm's `transforms_imagenet_eval` for `mobilevitv2_*.cvnets_in1k` (interpolation bicubic, mean 0,
    std 1), step by step as torchvision runs it on a PIL image: Resize(floor(size / crop_pct)) scales the
    short side and truncates the long one, CenterCrop starts at round(margin / 2), ToTensor divides by 255."""
    scale = math.floor(image_size / crop_pct)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(scale * long / short)
    resized = image.resize(
        (scale, new_long) if width <= height else (new_long, scale), Image.Resampling.BICUBIC
    )
    top = round((resized.height - image_size) / 2.0)
    left = round((resized.width - image_size) / 2.0)
    cropped = resized.crop((left, top, left + image_size, top + image_size))
    return np.asarray(cropped, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)


# (1000, 667) and (667, 1000) leave odd margins (431 - 256), where round and floor part ways.
SIZES = [(640, 480), (480, 640), (1000, 667), (667, 1000), (333, 517), (300, 300)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("image_size", "crop_pct"), [(256, 0.888), (384, 1.0)])
def test_trained_classifier_preprocessing_is_timms_evaluation_transform(
    size: tuple[int, int], image_size: int, crop_pct: float
) -> None:
    image = photo_like(*size, seed=size[0] + size[1])
    expected = timm_eval(image, image_size, crop_pct)
    actual = preprocess(image, trained_preprocessing("image-classification", (image_size, image_size)))
    assert actual.shape == expected.shape == (3, image_size, image_size)
    assert np.array_equal(actual, expected)  # bit for bit


def test_odd_margins_are_where_the_trained_crop_differs_from_transformers() -> None:
    image = photo_like(1000, 667, seed=3)
    trained = trained_preprocessing("image-classification", (256, 256))
    floor_crop = Preprocessing(resize_shortest_edge=288, resample=3, crop_height_width=(256, 256), bgr=False)
    assert not np.array_equal(preprocess(image, trained), preprocess(image, floor_crop))


def test_trained_is_rgb_and_hf_flips_to_bgr() -> None:
    red = Image.new("RGB", (400, 300), (255, 0, 0))
    assert preprocess(red, trained_preprocessing("image-classification", (256, 256)))[0].min() == 1.0
    assert preprocess(red, HUB_CLASSIFIER)[2].min() == 1.0  # transformers' flip: red lands last


def test_trained_dense_preprocessing_resizes_the_whole_image_bilinear_in_rgb() -> None:
    image = photo_like(640, 480, seed=5)
    for task in ("image-segmentation", "object-detection"):
        spec = trained_preprocessing(task, (512, 512))
        expected = np.asarray(image.resize((512, 512), Image.Resampling.BILINEAR), dtype=np.float32)
        assert np.array_equal(np.round(preprocess(image, spec) * 255), expected.transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("requested", "pipeline", "recorded", "profile", "reason"),
    [
        ("auto", "ml-cvnets", None, "trained", "default for weights trained with ml-cvnets"),
        (
            "auto",
            None,
            None,
            "hf",
            "default: preprocessor_config.json, no training pipeline recorded",
        ),
        (
            "auto",
            "transformers",
            None,
            "hf",
            "default: preprocessor_config.json, training pipeline 'transformers' has no trained profile here",
        ),
        ("auto", "ml-cvnets", "hf", "hf", "recorded in manifest.json"),
        ("auto", None, "trained", "trained", "recorded in manifest.json"),
        ("hf", "ml-cvnets", "trained", "hf", "requested"),
        ("trained", None, "hf", "trained", "requested"),
    ],
)
def test_which_profile_a_model_gets(
    requested: str, pipeline: str | None, recorded: str | None, profile: str, reason: str
) -> None:
    chosen = choose(requested, HUB_CLASSIFIER, (256, 256), "image-classification", pipeline, recorded)  # type: ignore[arg-type]
    assert (chosen.profile, chosen.reason) == (profile, reason)
    if profile == "hf":
        assert chosen.preprocessing is HUB_CLASSIFIER  # the folder's config, untouched
    else:
        assert chosen.preprocessing == trained_preprocessing("image-classification", (256, 256))


def test_the_trained_segmenter_takes_the_hub_configs_input_size() -> None:
    chosen = choose("auto", HUB_SEGMENTER, (512, 512), "image-segmentation", "ml-cvnets")
    assert chosen.preprocessing.fixed_input_size == (512, 512)
    assert chosen.preprocessing.crop_height_width is None and not chosen.preprocessing.bgr


def test_an_unknown_recorded_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing_profile 'bgr'"):
        choose("auto", HUB_CLASSIFIER, (256, 256), "image-classification", None, "bgr")
