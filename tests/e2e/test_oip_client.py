"""A real `mvit serve` process on loopback, driven by Triton's own client (`tritonclient[http]`) over the Open
Inference Protocol: its answers agree with the Hugging Face routes' answers for the same images."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.support import encode, photo_like, running_server

CLASSIFIER = "mobilevitv2-0.5-imagenet1k-256-random"
SEGMENTER = "mobilevitv2-0.5-voc-deeplabv3-512-random"
DETECTOR = "mobilevitv2-0.5-coco-ssdlite-320-random"
PHOTOS = [encode(photo_like(640, 480, seed=seed)) for seed in (21, 22)]


@pytest.fixture(scope="module")
def server(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[str]:
    # One image per inference call, as the HF routes' single requests run: the answers can then be
    # compared bit for bit (a batch of two sums its floats in another order: ~1e-6 apart).
    models = ("--model", str(model_dir), "--model", str(seg_model_dir), "--model", str(det_model_dir))
    with running_server(*models, "--max-batch-size", "1") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def images(photos: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(photos)], "BYTES")
    if binary:
        return tensor.set_data_from_numpy(np.array(photos, dtype=object))
    encoded = [base64.b64encode(photo).decode() for photo in photos]  # JSON carries text: base64
    return tensor.set_data_from_numpy(np.array(encoded, dtype=object), binary_data=False)


def text(element: bytes | str) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON."""
    return element.decode() if isinstance(element, bytes) else element


def hf_answers(server: str, route: str, photos: list[bytes], **parameters: object) -> list[list[dict]]:
    return [
        httpx.post(f"{server}{route}", content=photo, params=parameters, timeout=60).json()
        for photo in photos
    ]


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    for name in (CLASSIFIER, SEGMENTER, DETECTOR):
        assert client.is_model_ready(name)
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_model_metadata(DETECTOR)
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("boxes", "FP32", [-1, -1, 4]),
        ("scores", "FP32", [-1, -1]),
        ("labels", "BYTES", [-1, -1]),
        ("count", "INT32", [-1]),
    ]
    assert metadata["parameters"]["labels"][0] == "background"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_agrees_with_the_hf_route(
    client: triton.InferenceServerClient, server: str, binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("labels", "scores")]
    result = client.infer(CLASSIFIER, [images(PHOTOS, binary)], outputs=outputs, parameters={"top_k": 3})
    labels, scores = result.as_numpy("labels"), result.as_numpy("scores")
    assert labels.shape == scores.shape == (2, 3) and scores.dtype == np.float32
    for i, expected in enumerate(hf_answers(server, "/classify", PHOTOS, top_k=3)):
        assert [text(label) for label in labels[i]] == [item["label"] for item in expected]
        np.testing.assert_array_equal(scores[i], np.float32([item["score"] for item in expected]))
    assert labels[0].tolist() != labels[1].tolist()  # two photos, two answers: each image kept its own


def test_detection_agrees_with_the_hf_route(client: triton.InferenceServerClient, server: str) -> None:
    result = client.infer(DETECTOR, [images(PHOTOS)], parameters={"threshold": 0.3})
    boxes, scores, labels, count = (result.as_numpy(name) for name in ("boxes", "scores", "labels", "count"))
    expected = hf_answers(server, "/detect", PHOTOS, threshold=0.3)
    assert count.tolist() == [len(answer) for answer in expected] and count.dtype == np.int32
    assert boxes.shape == (2, max(count), 4)
    for i, answer in enumerate(expected):
        n = count[i]
        corners = [[item["box"][c] for c in ("xmin", "ymin", "xmax", "ymax")] for item in answer]
        assert boxes[i, :n].tolist() == corners
        assert [text(label) for label in labels[i, :n]] == [item["label"] for item in answer]
        np.testing.assert_array_equal(scores[i, :n], np.float32([item["score"] for item in answer]))
        assert not boxes[i, n:].any() and not scores[i, n:].any()  # the padding


def test_segmentation_agrees_with_the_hf_route(client: triton.InferenceServerClient, server: str) -> None:
    result = client.infer(SEGMENTER, [images(PHOTOS)])
    label_ids = result.as_numpy("label_ids")
    assert label_ids.shape == (2, 480, 640) and label_ids.dtype == np.uint8
    names = client.get_model_metadata(SEGMENTER)["parameters"]["labels"]
    for i, answer in enumerate(hf_answers(server, "/segment", PHOTOS)):
        assert sorted(names[c] for c in np.unique(label_ids[i])) == sorted(item["label"] for item in answer)
        for item in answer:
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["mask"])))) == 255
            np.testing.assert_array_equal(mask, label_ids[i] == names.index(item["label"]))


def test_errors_reach_the_client_as_messages(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="is not served here") as missing:
        client.infer("no-such-model", [images(PHOTOS[:1])])
    assert missing.value.status() == "404"
    with pytest.raises(InferenceServerException, match=r"Image 2 of 2: .*not a recognised image") as bad:
        client.infer(CLASSIFIER, [images([PHOTOS[0], b"not an image at all"])])
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException, match="Unknown parameter"):
        client.infer(CLASSIFIER, [images(PHOTOS[:1])], parameters={"top_q": 3})
    assert client.is_server_ready()  # and it keeps serving
