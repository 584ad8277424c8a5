"""Detection: parity with ml-cvnets' SSDLite (raw outputs, anchors, detections), NMS, boxes, /detect."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from app.labels import read_labels
from app.nn.build import build_network
from app.repository import read_model_dir
from app.tasks.detection import (
    Detections,
    Detector,
    SSDConfig,
    decode_boxes,
    feature_map_sizes,
    postprocess,
    softmax,
    ssd_anchors,
)
from app.tools.convert import convert_cvnets_checkpoint
from tests.support import (
    CVNETS_FIXTURES,
    assert_matches,
    cvnets_fixture,
    encode,
    load_served,
    photo_like,
    photo_with_shapes,
    serving,
)

FIXTURE = CVNETS_FIXTURES / "ssdlite_mobilevitv2_0.5_coco"
needs_fixture = pytest.mark.usefixtures("cvnets_fixtures")


def fixture_detections() -> list[dict]:
    return json.loads((FIXTURE / "detections.json").read_text())["detections"]


@needs_fixture
def test_anchors_match_cvnets() -> None:
    config = SSDConfig()
    anchors = ssd_anchors(feature_map_sizes(320, 320, config.output_strides), config.anchor_aspect_ratios)
    reference = np.load(FIXTURE / "anchors_cxcywh.npy")
    assert anchors.shape == reference.shape == (3232, 4)
    assert np.abs(anchors - reference).max() <= 1e-6


@needs_fixture
def test_postprocessing_the_fixture_outputs_gives_cvnets_detections_exactly() -> None:
    scores, boxes = np.load(FIXTURE / "scores.npy")[0], np.load(FIXTURE / "boxes_xyxy.npy")[0]
    anchors = np.load(FIXTURE / "anchors_cxcywh.npy")
    assert np.abs(softmax(np.load(FIXTURE / "cls_logits.npy")[0]) - scores).max() <= 5e-6
    assert np.abs(decode_boxes(np.load(FIXTURE / "box_regression.npy")[0], anchors) - boxes).max() <= 5e-6
    detections = postprocess(scores, boxes)
    reference = fixture_detections()
    assert len(detections.labels) == len(reference) == 200
    assert detections.labels.tolist() == [d["label"] for d in reference]
    assert detections.scores.tolist() == [d["score"] for d in reference]
    assert np.array_equal(
        detections.boxes, np.array([d["box_xyxy_normalized"] for d in reference], np.float32)
    )


@pytest.fixture(scope="module")
def cvnets_ssd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cvnets_fixture(FIXTURE.name)
    checkpoint = tmp_path_factory.mktemp("pt") / "coco-ssd-mobilevitv2-0.5.pt"
    from safetensors.torch import load_file

    torch.save(load_file(str(FIXTURE / "state_dict.safetensors")), checkpoint)  # as Apple ships them
    return convert_cvnets_checkpoint(checkpoint, tmp_path_factory.mktemp("converted"))


@needs_fixture
def test_converted_checkpoint_reproduces_cvnets(cvnets_ssd: Path) -> None:
    model_dir = read_model_dir(cvnets_ssd)
    assert cvnets_ssd.name == "cvnets-mobilevitv2-0.5-coco-ssdlite"
    assert model_dir.task == "object-detection" and model_dir.labels == read_labels("coco")
    network = build_network(model_dir)
    pixels = torch.from_numpy(np.load(FIXTURE / "input.npy"))
    with torch.inference_mode():
        features = network.features(pixels)
        logits, regression = network(pixels)
    for feature, name in zip(features, ["os16", "os32", "os64", "os128", "os256", "os_global"], strict=True):
        assert_matches(feature, np.load(FIXTURE / f"feat_{name}.npy"), name)
    assert_matches(logits, np.load(FIXTURE / "cls_logits.npy"))
    assert_matches(regression, np.load(FIXTURE / "box_regression.npy"), "box_regression")

    detector = Detector.for_input(SSDConfig.from_dict(model_dir.config), 320, 320)
    detections = detector.detect(logits[0].numpy(), regression[0].numpy(), threshold=0.0)
    reference = fixture_detections()
    unmatched = [
        ref
        for ref in reference
        if not any(
            label == ref["label"]
            and abs(score - ref["score"]) <= 1e-4
            and np.abs(box - np.array(ref["box_xyxy_normalized"])).max() <= 1e-4
            for label, score, box in zip(detections.labels, detections.scores, detections.boxes, strict=True)
        )
    ]
    assert len(detections.labels) == 200 and not unmatched


def test_nms_is_per_class_and_suppresses_only_above_the_threshold() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10.5], [5, 0, 15, 10], [0, 0, 10, 20], [20, 20, 30, 30], [0, 0, 10, 10]],
        dtype=np.float32,
    )
    # Classes: background, A, B. Anchor 5 is class B over the same place as anchor 0 (class A).
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.85], dtype=np.float32)
    scores = np.zeros((6, 3), dtype=np.float32)
    scores[:5, 1], scores[5, 2] = probs[:5], probs[5]
    scores[:, 0] = 1 - probs
    found = postprocess(scores, boxes, conf_threshold=0.01, top_k=400, iou_threshold=0.5, max_objects=200)
    # A1: IoU 0.95 with A0 -> suppressed; A2: IoU 1/3; A3: IoU exactly 0.5 -> kept (not > 0.5); B is its own class
    assert found.labels.tolist() == [1, 2, 1, 1, 1]
    np.testing.assert_array_equal(found.scores, probs[[0, 5, 2, 3, 4]])
    assert postprocess(scores, boxes, 0.01, 400, 0.5, max_objects=2).labels.tolist() == [1, 2]
    assert postprocess(scores, boxes, 0.01, top_k=1, iou_threshold=0.5, max_objects=200).scores.tolist() == [
        probs[0],
        probs[5],
    ]
    assert postprocess(scores, boxes, 0.95, 400, 0.5, 200).labels.size == 0


def definition(
    scores: np.ndarray, boxes: np.ndarray, conf: float, top_k: int, iou_threshold: float, max_objects: int
) -> list[tuple[int, int]]:
    """cvnets' post-processing as written down, slowly: per class, the candidates over `conf`, best first
    (ties in anchor order), the first `top_k`, greedy NMS; then the best `max_objects` of all classes.
    Returns (anchor, class) pairs in the order they are answered."""
    survivors = []
    for cls in range(1, scores.shape[1]):
        anchors = [a for a in np.argsort(-scores[:, cls], kind="stable") if scores[a, cls] > conf][:top_k]
        kept: list[int] = []
        for a in anchors:
            if all(not iou(boxes[a], boxes[k]) > iou_threshold for k in kept):
                kept.append(a)
        survivors += [(a, cls) for a in kept]
    survivors.sort(key=lambda pair: (-scores[pair], pair[0]))  # candidates are anchor-major
    return survivors[:max_objects]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float("nan")


def random_scene(seed: int, anchors: int, classes: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the coarse grid 0, 1/8, ... (grid - 1)/8, so with ties; boxes at few distinct places, so
    overlapping, some without area."""
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, grid, (anchors, classes)) / 8).astype(np.float32)
    centres = rng.uniform(0, 1, (anchors, 2)).round(1)
    sizes = rng.choice([0.0, 0.1, 0.3], (anchors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    return scores, boxes


def assert_found(
    found: Detections, expected: list[tuple[int, int]], scores: np.ndarray, boxes: np.ndarray
) -> None:
    """`found` is the (anchor, class) pairs `expected`, in that order."""
    assert found.labels.tolist() == [cls for _, cls in expected]
    assert found.scores.tolist() == [scores[pair] for pair in expected]
    assert np.array_equal(found.boxes, boxes[[a for a, _ in expected]].reshape(-1, 4))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    anchors=st.integers(1, 60),
    classes=st.integers(2, 6),
    top_k=st.integers(1, 20),
    max_objects=st.integers(1, 30),
    iou_threshold=st.sampled_from([0.3, 0.5, 0.7]),
)
def test_postprocess_is_the_definition(
    seed: int, anchors: int, classes: int, top_k: int, max_objects: int, iou_threshold: float
) -> None:
    """On random scenes with ties (scores on a coarse grid), clusters of overlapping boxes and empty boxes."""
    scores, boxes = random_scene(seed, anchors, classes, grid=8)
    found = postprocess(scores, boxes, 0.1, top_k, iou_threshold, max_objects)
    expected = definition(scores, boxes, 0.1, top_k, iou_threshold, max_objects)
    assert_found(found, expected, scores, boxes)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    anchors=st.integers(1, 60),
    top_k=st.integers(1, 20),
    max_objects=st.integers(1, 30),
    min_score=st.sampled_from([0.0, 0.05, 0.1, 0.125, 0.375, 0.5, 0.6, 0.875, 1.0]),
)
def test_min_score_answers_the_definitions_detections_above_it(
    seed: int, anchors: int, top_k: int, max_objects: int, min_score: float
) -> None:
    """What the service answers (`postprocess`'s `min_score`, which `Detector.answer` passes): only the
    detections scoring at least `min_score`, and the very ones the whole post-processing keeps, where
    top_k, NMS and max_objects all bite, with ties at and around `min_score` (scores on the same coarse
    grid) and `min_score` below, at and above the candidate floor (0.1 here)."""
    scores, boxes = random_scene(seed, anchors, 4, grid=9)
    found = postprocess(scores, boxes, 0.1, top_k, 0.5, max_objects, min_score=min_score)
    expected = [
        pair for pair in definition(scores, boxes, 0.1, top_k, 0.5, max_objects) if scores[pair] >= min_score
    ]
    assert_found(found, expected, scores, boxes)


def test_a_threshold_just_above_the_floor_answers_what_the_full_path_does() -> None:
    """0.01 + 1e-10 and 0.01 are the same float32: a score of exactly float32(0.01) is below the floor
    (p > 0.01) for both paths, though it is >= the threshold as float32."""
    scores = np.array([[0.5, 0.01, 0.3], [0.2, 0.5, 0.01]], dtype=np.float32)
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], dtype=np.float32)
    threshold = 0.01 + 1e-10
    full = postprocess(scores, boxes, min(0.01, threshold)).above(threshold)
    answer = postprocess(scores, boxes, min(0.01, threshold), min_score=threshold)
    assert answer.scores.tolist() == full.scores.tolist() == [np.float32(0.5), np.float32(0.3)]
    assert answer.labels.tolist() == full.labels.tolist() == [1, 2]


def test_the_answer_is_every_detection_above_the_threshold(det_model_dir: Path) -> None:
    """On the demo detector's outputs for photos, at the thresholds a caller sends (0 keeps everything)."""
    model = load_served(det_model_dir)
    from app.intake.preprocess import preprocess

    for seed in range(3):
        image = photo_with_shapes(640, 480, seed=seed) if seed else photo_like(640, 480, seed=seed)
        outputs = model.backend.infer(preprocess(image, model.preprocessing)[None])
        logits, regression = outputs["logits"][0], outputs["box_regression"][0]
        for threshold in (0.0, 0.005, 0.02, 0.3, 0.5, 0.9):
            everything = model.detector.detect(logits, regression, threshold)
            answer = model.detector.answer(logits, regression, threshold)
            expected = everything.above(threshold)
            assert answer.labels.tolist() == expected.labels.tolist()
            assert answer.scores.tolist() == expected.scores.tolist()
            assert np.array_equal(answer.boxes, expected.boxes)


@pytest.mark.parametrize(("height", "width"), [(320, 320), (384, 512), (256, 256)])
def test_anchor_count_follows_the_input_size(height: int, width: int) -> None:
    config = SSDConfig()
    sizes = feature_map_sizes(height, width, config.output_strides)
    assert sizes[0] == (height // 16, width // 16) and sizes[-1] == (1, 1)
    anchors = ssd_anchors(sizes, config.anchor_aspect_ratios)
    expected = sum(h * w * a for (h, w), a in zip(sizes, config.anchors_per_location, strict=True))
    assert anchors.shape == (expected, 4) and anchors.min() >= 0 and anchors.max() <= 1


# --- HTTP -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def det_client(det_model_dir: Path) -> Iterator[TestClient]:
    with serving(det_model_dir) as client:
        yield client


def check_detections(body: list, size: tuple[int, int], threshold: float) -> None:
    assert isinstance(body, list)
    coco = set(read_labels("coco")[1:])
    scores = [d["score"] for d in body]
    assert scores == sorted(scores, reverse=True)
    for d in body:
        assert set(d) == {"score", "label", "box"} and d["label"] in coco
        assert isinstance(d["score"], float) and threshold <= d["score"] <= 1
        box = d["box"]
        assert set(box) == {"xmin", "ymin", "xmax", "ymax"} and all(isinstance(v, int) for v in box.values())
        assert 0 <= box["xmin"] <= box["xmax"] <= size[0] and 0 <= box["ymin"] <= box["ymax"] <= size[1]


def test_boxes_map_back_to_non_square_images(det_client: TestClient, det_model_dir: Path) -> None:
    model = load_served(det_model_dir)
    image = photo_like(640, 360, seed=12)
    data = encode(image, "PNG")
    body = det_client.post("/detect", content=data, params={"threshold": 0.02}).json()
    check_detections(body, (640, 360), 0.02)
    assert len(body) >= 3
    # The same detections, computed here from the normalised boxes: x scales by 640, y by 360.
    from app.intake.preprocess import preprocess

    outputs = model.backend.infer(preprocess(image, model.preprocessing)[None])
    detections = model.detector.detect(outputs["logits"][0], outputs["box_regression"][0], 0.02)
    expected = [
        [int(np.clip(v * s, 0, s)) for v, s in zip(box, (640, 360, 640, 360), strict=True)]
        for box, score in zip(detections.boxes, detections.scores, strict=True)
        if score >= 0.02
    ]
    assert [[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in body] == expected


def test_exif_rotation_is_applied_before_detection(det_client: TestClient) -> None:
    upright = photo_like(300, 500, seed=13)  # what the viewer sees
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how the camera stored it (500x300)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    low = {"threshold": 0.001}  # calibrated demo weights are sure of little on a smooth image
    rotated = det_client.post(
        "/detect", content=encode(stored, "PNG", exif=exif.tobytes()), params=low
    ).json()
    plain = det_client.post("/detect", content=encode(upright, "PNG"), params=low).json()
    assert rotated == plain and rotated
    check_detections(rotated, (300, 500), 0.001)


def test_threshold_and_body_forms(det_client: TestClient) -> None:
    data = encode(photo_like(400, 300, seed=14), "JPEG")
    default = det_client.post("/detect", content=data).json()
    check_detections(default, (400, 300), 0.5)
    assert 0 < len(default) <= 200  # cvnets keeps at most 200 objects per image
    strict = det_client.post("/detect", params={"threshold": 0.3}, content=data).json()
    loose = det_client.post(
        "/detect", json={"inputs": base64.b64encode(data).decode(), "parameters": {"threshold": 0.05}}
    ).json()
    form = det_client.post("/detect", files={"image": ("a.jpg", data)}, data={"threshold": "0.05"}).json()
    assert loose == form and len(loose) > len(strict) > 0
    assert [d for d in loose if d["score"] >= 0.3] == strict
    for value in ("2", "-0.1", "lots", "true"):
        response = det_client.post("/detect", params={"threshold": value}, content=data)
        assert response.status_code == 400 and "threshold" in response.json()["error"]
    unknown = det_client.post("/detect", params={"top_k": 3}, content=data)
    assert unknown.status_code == 400 and "Unknown parameter" in unknown.json()["error"]
    assert det_client.post("/detect", content=b"\x00" * 10).status_code == 400


def test_a_big_rotated_photo_is_decoded_reduced_and_boxes_use_its_full_frame(det_client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 2560x1920, shown 1920x2560; decoded at 1/2 for a 320x320 input
    data = encode(photo_like(2560, 1920, seed=13), "JPEG", quality=90, exif=exif.tobytes())
    body = det_client.post("/detect", content=data, params={"threshold": 0.003}).json()
    check_detections(body, (1920, 2560), 0.003)
    assert max(d["box"]["ymax"] for d in body) > 1280  # in the full frame, not the reduced 960x1280 one


def test_compare_counts_detections_agreeing_as_sets(det_model_dir: Path) -> None:
    from app.intake.preprocess import preprocess
    from app.tools.compare import detection_agreement

    model = load_served(det_model_dir)
    batch = np.stack([preprocess(photo_with_shapes(640, 480, seed), model.preprocessing) for seed in (4, 8)])
    outputs = model.backend.infer(batch)
    found = sum(
        len(model.detector.detect(outputs["logits"][i], outputs["box_regression"][i], 0.5).above(0.5).scores)
        for i in range(2)
    )
    assert found >= 2
    same = detection_agreement(model.detector, outputs, outputs)
    assert same == (found, found, found) and str(same).endswith(f"{found} agreeing (100.0%)")
    moved = dict(outputs, box_regression=outputs["box_regression"] + 10.0)  # every box far from its own
    assert f"(reference {found}), 0 agreeing (0.0%)" in str(
        detection_agreement(model.detector, moved, outputs)
    )
