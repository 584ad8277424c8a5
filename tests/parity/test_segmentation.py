"""Segmentation: network parity (transformers and ml-cvnets), mask upsampling, the /segment contract."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from transformers import MobileViTV2Config as HFConfig
from transformers import MobileViTV2ForSemanticSegmentation as HFSegmenter

from app.backends.parity import tolerance
from app.intake.preprocess import Preprocessing, preprocess
from app.labels import read_labels
from app.nn.build import build_network
from app.nn.mobilevitv2 import randomize_weights
from app.repository import read_model_dir
from app.tasks.segmentation import label_map
from app.tools.convert import convert_cvnets_checkpoint
from tests.support import (
    CVNETS_FIXTURES,
    assert_matches,
    cvnets_fixture,
    encode,
    photo_like,
    serving,
    smooth_images,
)

FIXTURES = CVNETS_FIXTURES
needs_fixtures = pytest.mark.usefixtures("cvnets_fixtures")


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_logits_match_transformers(tmp_path: Path, width: float) -> None:
    labels = read_labels("voc")
    config = HFConfig(
        width_multiplier=width,
        output_stride=16,
        num_labels=21,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        architectures=["MobileViTV2ForSemanticSegmentation"],
    )
    reference = HFSegmenter(config).eval()
    randomize_weights(
        reference, seed=int(width * 10), head_names=("segmentation_head.classifier.convolution",)
    )
    reference.save_pretrained(tmp_path)
    spec = Preprocessing(resize_shortest_edge=512, crop_height_width=(512, 512))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(spec.to_hf_config()))
    ours = build_network(read_model_dir(tmp_path))
    pixels = smooth_images(2, 512, 512, seed=3)
    with torch.inference_mode():
        expected = reference(pixel_values=pixels).logits
        actual = ours(pixels)
    assert actual.shape == (2, 21, 32, 32)
    assert expected.std() > 0.5 and (expected[0] - expected[1]).abs().max() > 1e-2
    assert expected.argmax(dim=1).unique().numel() > 1  # more than one class on the map
    assert_matches(actual, expected)


@pytest.fixture(scope="module")
def cvnets_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cvnets_fixture("deeplabv3_mobilevitv2_0.5_voc")
    source = FIXTURES / "deeplabv3_mobilevitv2_0.5_voc" / "state_dict.safetensors"
    return convert_cvnets_checkpoint(source, tmp_path_factory.mktemp("converted"))


@needs_fixtures
def test_cvnets_deeplabv3_reproduces_the_reference(cvnets_voc: Path) -> None:
    fixture = FIXTURES / "deeplabv3_mobilevitv2_0.5_voc"
    model_dir = read_model_dir(cvnets_voc)
    assert model_dir.task == "image-segmentation" and model_dir.labels == read_labels("voc")
    assert model_dir.manifest["upsample_align_corners"] is True
    assert Preprocessing.from_hf_config(model_dir.preprocessor_config).bgr is False  # cvnets is RGB
    network = build_network(model_dir)
    with torch.inference_mode():
        lowres = network(torch.from_numpy(np.load(fixture / "input.npy")))
    assert_matches(lowres, np.load(fixture / "logits_lowres.npy"))

    # Full resolution: cvnets upsamples inside its head with align_corners=True.
    fullres = torch.nn.functional.interpolate(lowres, size=(512, 512), mode="bilinear", align_corners=True)[0]
    grid = json.loads((fixture / "meta.json").read_text())["fullres_subsample_indices_rows_and_cols"]
    sampled = fullres[:, grid][:, :, grid].numpy()
    assert_matches(sampled[None], np.load(fixture / "logits_fullres_subsampled.npy"))

    mask = label_map(lowres[0].numpy(), 512, 512, align_corners=True)
    reference = np.load(fixture / "mask.npy")
    top2 = torch.topk(fullres, 2, dim=0).values
    ambiguous = ((top2[0] - top2[1]) < 1e-4).numpy()
    assert np.array_equal(mask[~ambiguous], reference[~ambiguous])
    assert len(np.unique(reference)) > 3


@needs_fixtures
def test_cvnets_classifier_reproduces_the_reference(tmp_path: Path) -> None:
    fixture = FIXTURES / "mobilevitv2_0.5_imagenet"
    model_dir = read_model_dir(convert_cvnets_checkpoint(fixture / "state_dict.safetensors", tmp_path))
    assert (
        model_dir.task == "image-classification"
        and model_dir.path.name == "cvnets-mobilevitv2-0.5-imagenet1k-256"
    )
    with torch.inference_mode():
        logits = build_network(model_dir)(torch.from_numpy(np.load(fixture / "input.npy")))
    assert_matches(logits, np.load(fixture / "logits.npy"))
    assert model_dir.training_pipeline == "ml-cvnets"
    # cvnets' ImageNet evaluation: short side 288 for a 256 crop, 384 for a 384 crop, bicubic, RGB.
    assert model_dir.preprocessor_config["size"] == {"shortest_edge": 288}
    at_384 = convert_cvnets_checkpoint(fixture / "state_dict.safetensors", tmp_path / "384", image_size=384)
    config_384 = read_model_dir(at_384).preprocessor_config
    assert config_384["size"] == {"shortest_edge": 384} and config_384["crop_size"] == {
        "height": 384,
        "width": 384,
    }
    assert config_384["resample"] == 3 and config_384["do_flip_channel_order"] is False


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    ("low", "out"),
    [
        ((32, 32), (480, 640)),
        ((32, 32), (511, 333)),
        ((32, 32), (17, 23)),
        ((8, 5), (1000, 3)),
        ((4, 4), (1, 1)),
    ],
)
def test_label_map_equals_dense_upsample_then_argmax(
    low: tuple[int, int], out: tuple[int, int], align_corners: bool
) -> None:
    rng = np.random.default_rng(sum(low) + sum(out))
    coarse = torch.from_numpy(rng.normal(0, 2, (1, 21, low[0] // 2 + 1, low[1] // 2 + 1)).astype(np.float32))
    logits = torch.nn.functional.interpolate(coarse, size=low, mode="bilinear")[0].numpy()
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    dense = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[None], size=out, mode="bilinear", align_corners=align_corners
    )[0]
    expected = dense.argmax(dim=0).numpy()
    actual = label_map(logits, *out, align_corners=align_corners)
    assert actual.shape == out
    assert (actual != expected).mean() <= 1e-4


# --- HTTP -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_client(seg_model_dir: Path) -> Iterator[TestClient]:
    with serving(seg_model_dir, max_image_pixels=20_000_000, max_body_bytes=30_000_000) as client:
        yield client


def decode_mask(entry: dict) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(entry["mask"])))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def check_segmentation(body: list, size: tuple[int, int], labels: list[str]) -> list[np.ndarray]:
    assert isinstance(body, list) and body
    assert [labels.index(e["label"]) for e in body] == sorted(labels.index(e["label"]) for e in body)
    masks = []
    for entry in body:
        assert set(entry) == {"label", "mask"}  # no "score": the JS client rejects null
        mask = decode_mask(entry)
        assert mask.shape == (size[1], size[0])
        assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        masks.append(mask)
    coverage = np.sum([m // 255 for m in masks], axis=0)
    assert np.array_equal(coverage, np.ones_like(coverage))  # every pixel in exactly one mask
    return masks


def near_ties(model_dir: Path, image: Image.Image) -> np.ndarray:
    """Pixels whose two best classes, in the logits upsampled to the image, are closer than the parity
    tolerance: there float32 noise alone may pick either, so a faithful port may label them otherwise."""
    pixels = preprocess(image, Preprocessing.from_hf_config(read_model_dir(model_dir).preprocessor_config))
    with torch.inference_mode():
        logits = build_network(read_model_dir(model_dir))(torch.from_numpy(pixels[None]))
        dense = torch.nn.functional.interpolate(logits, size=image.size[::-1], mode="bilinear")[0]
    top2 = torch.topk(dense, 2, dim=0).values.numpy()
    return (top2[0] - top2[1]) <= 2 * tolerance(logits.numpy())


def test_masks_match_the_transformers_pipeline(seg_client: TestClient, seg_model_dir: Path) -> None:
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(seg_model_dir), device="cpu")
    labels = read_labels("voc")
    checked = 0
    for seed, size in enumerate([(640, 480), (375, 500), (512, 512)]):
        data = encode(photo_like(*size, seed=20 + seed), "PNG")
        image = Image.open(io.BytesIO(data)).convert("RGB")
        expected = segmenter(image, subtask="semantic")
        response = seg_client.post("/segment", content=data)
        assert response.status_code == 200, response.text
        masks = check_segmentation(response.json(), size, labels)
        assert [e["label"] for e in response.json()] == [e["label"] for e in expected]
        ties = near_ties(seg_model_dir, image)
        assert ties.mean() < 1e-3  # the exemption is for a handful of boundary pixels
        for mask, reference in zip(masks, expected, strict=True):
            ours, theirs = mask > 0, np.asarray(reference["mask"]) > 0
            assert not ((ours != theirs) & ~ties).any()  # the same class wherever it is not a tie
            checked += 1
    assert checked >= 4  # several classes took part, not one flat mask


def test_body_forms_parameters_and_errors(seg_client: TestClient) -> None:
    data = encode(photo_like(320, 240, seed=4), "JPEG")
    raw = seg_client.post("/segment", content=data).json()
    as_json = seg_client.post(
        "/segment",
        json={
            "inputs": base64.b64encode(data).decode(),
            "parameters": {
                "subtask": "semantic",
                "threshold": 0.9,
                "mask_threshold": 0.5,
                "overlap_mask_area_threshold": 0.5,
            },
        },
    ).json()
    form = seg_client.post("/segment", files={"file": ("a.jpg", data)}, data={"subtask": "semantic"}).json()
    assert raw == as_json == form
    for parameters, fragment in (
        ({"subtask": "instance"}, "semantic-only"),
        ({"subtask": "panoptic"}, "semantic-only"),
        ({"subtask": "everything"}, "must be semantic, instance or panoptic"),
        ({"threshold": 2}, "between 0 and 1"),
        ({"threshold": "high"}, "between 0 and 1"),
        ({"top_k": 3}, "Unknown parameter"),
    ):
        response = seg_client.post(
            "/segment", json={"inputs": base64.b64encode(data).decode(), "parameters": parameters}
        )
        assert response.status_code == 400 and fragment in response.json()["error"], (
            parameters,
            response.text,
        )
    assert seg_client.post("/segment", content=b"nope").status_code == 400
    # /classify has no model here: 404 that says so.
    missing = seg_client.post("/classify", content=data)
    assert missing.status_code == 404 and "No image-classification model" in missing.json()["error"]


def test_masks_follow_exif_orientation(seg_client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 400x300, shown 300x400
    data = encode(photo_like(400, 300, seed=8), "JPEG", exif=exif.tobytes())
    check_segmentation(seg_client.post("/segment", content=data).json(), (300, 400), read_labels("voc"))


def test_a_12_megapixel_photo(seg_client: TestClient) -> None:
    data = encode(photo_like(4032, 3024, seed=9), "JPEG", quality=85)
    response = seg_client.post("/segment", content=data)
    assert response.status_code == 200
    check_segmentation(response.json(), (4032, 3024), read_labels("voc"))
