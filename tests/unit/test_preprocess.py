"""Preprocessing against transformers' MobileViTImageProcessor (PIL backend), on the same PIL images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil

from app.intake.preprocess import Preprocessing, preprocess
from tests.support import photo_like

HUB_STYLE_CONFIGS = [
    # apple/mobilevitv2-*-imagenet1k-256 style, legacy int sizes
    {"size": 288, "crop_size": 256, "resample": 2, "do_flip_channel_order": True},
    # dict sizes, bicubic, 384 crop
    {"size": {"shortest_edge": 384}, "crop_size": {"height": 384, "width": 384}, "resample": 3},
    # segmentation style: 512 short side, 512 crop, bilinear
    {"size": {"shortest_edge": 512}, "crop_size": {"height": 512, "width": 512}, "resample": 2},
    # short side smaller than the crop: the crop pads with zeros
    {"size": {"shortest_edge": 200}, "crop_size": {"height": 256, "width": 256}, "resample": 2},
    # no channel flip, nearest
    {"size": 288, "crop_size": 256, "resample": 0, "do_flip_channel_order": False},
]


@pytest.mark.parametrize("config", HUB_STYLE_CONFIGS)
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 517), (97, 1203), (256, 256)])
def test_matches_transformers_processor(config: dict, size: tuple[int, int]) -> None:
    image = photo_like(*size, seed=size[0])
    expected = MobileViTImageProcessorPil(**config)(image, return_tensors="np")["pixel_values"][0]
    actual = preprocess(image, Preprocessing.from_hf_config(config))
    assert actual.dtype == np.float32 and actual.flags.c_contiguous
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected)  # bit for bit
    assert actual.std() > 0.05  # a real image, not a blank


def test_dividing_by_255_is_transformers_rescale_for_every_byte() -> None:
    values = np.arange(256, dtype=np.uint8)
    transformers_way = (values.astype(np.float64) * (1 / 255)).astype(np.float32)
    assert np.array_equal(values / np.float32(255), transformers_way)
    assert not np.array_equal(values * np.float32(1 / 255), transformers_way)  # why it divides


def test_other_rescale_factors_follow_transformers_formula() -> None:
    image = photo_like(300, 200, seed=4)
    config = {"size": 256, "crop_size": 256, "rescale_factor": 1 / 127.5, "do_flip_channel_order": False}
    expected = MobileViTImageProcessorPil(**config)(image, return_tensors="np")["pixel_values"][0]
    assert np.array_equal(preprocess(image, Preprocessing.from_hf_config(config)), expected)


def test_bgr_flip_and_rgb() -> None:
    image = Image.new("RGB", (300, 300), (255, 0, 0))
    bgr = preprocess(image, Preprocessing(resize_shortest_edge=288, crop_height_width=(256, 256)))
    rgb = preprocess(image, Preprocessing(resize_shortest_edge=288, crop_height_width=(256, 256), bgr=False))
    assert bgr[2].min() == 1.0 and bgr[0].max() == 0.0
    assert rgb[0].min() == 1.0 and rgb[2].max() == 0.0


def test_hf_config_round_trip() -> None:
    spec = Preprocessing(resize_shortest_edge=432, resample=3, crop_height_width=(384, 384))
    assert Preprocessing.from_hf_config(spec.to_hf_config()) == spec


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (10, 10)), Preprocessing())


@pytest.mark.parametrize(
    ("spec", "gap", "expected"),
    [
        (Preprocessing(resize_shortest_edge=288, crop_height_width=(256, 256)), 2.0, (576, 576)),
        (Preprocessing(resize_height_width=(320, 480)), 1.5, (720, 480)),
        (Preprocessing(resize_shortest_edge=288), 0.0, None),  # off
        (Preprocessing(crop_height_width=(256, 256)), 2.0, None),  # no resize: needs every pixel
    ],
)
def test_min_decode_size(spec: Preprocessing, gap: float, expected: tuple[int, int] | None) -> None:
    assert spec.min_decode_size(gap) == expected


def test_the_resize_target_follows_the_full_size_of_a_reduced_image() -> None:
    """The target comes from the full image's size, so a reduced decode (which rounds its size up)
    lands on exactly the size a full decode would."""
    spec = Preprocessing(resize_shortest_edge=100)
    reduced = Image.new("RGB", (200, 100))
    assert preprocess(reduced, spec).shape == (3, 100, 200)
    assert preprocess(reduced, spec, full_size=(310, 100)).shape == (3, 100, 310)


@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5])  # lanczos, bilinear, bicubic, box, hamming
@pytest.mark.parametrize(
    "size",
    [
        (640, 480),
        (480, 640),
        pytest.param((4032, 3024), marks=pytest.mark.slow),
        (301, 999),
        (288, 500),
        (1000, 288),
    ],
)
def test_skipping_the_cropped_columns_gives_the_one_call_resize_exactly(
    resample: int, size: tuple[int, int]
) -> None:
    """Preprocessing runs Pillow's two resize passes as two calls and drops the columns the crop cuts
    in between: the result must be the one-call resize, then crop, bit for bit."""
    spec = Preprocessing(resize_shortest_edge=288, crop_height_width=(256, 256), resample=resample)
    image = photo_like(*size, seed=size[1])
    resized = np.asarray(image.resize(spec.resized_size(*size), resample=Image.Resampling(resample)))
    top, left = (resized.shape[0] - 256) // 2, (resized.shape[1] - 256) // 2
    expected = resized[top : top + 256, left : left + 256, ::-1].transpose(2, 0, 1)  # BGR, CHW
    actual = np.rint(preprocess(image, spec) * 255)
    assert expected.std() > 10
    assert np.array_equal(actual, expected)
