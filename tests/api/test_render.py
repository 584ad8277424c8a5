"""Annotated images: how they are asked for, their size and orientation, and what is drawn where."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api import create_app
from app.api.admission import server_timing
from app.api.inference import answer_format
from app.tasks import classification, detection, drawing, segmentation
from tests.support import encode, make_settings, photo_like, wait_ready

ROUTES = ("/classify", "/segment", "/detect")


@pytest.fixture(scope="module")
def three(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(
        model_dir, models=[str(model_dir), str(seg_model_dir), str(det_model_dir)], render_max_side=500
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def as_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("route", ROUTES)
def test_render_png_and_jpeg_on_every_task(three: TestClient, route: str) -> None:
    photo = encode(photo_like(640, 480, seed=8), quality=95)
    for fmt, media_type, pil_format in (("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG")):
        answer = three.post(route, content=photo, params={"render": fmt})
        assert answer.status_code == 200 and answer.headers["content-type"] == media_type
        image = as_image(answer.content)
        assert image.format == pil_format and image.size == (500, 375)  # render_max_side=500
        assert "render;dur=" in answer.headers["server-timing"] and "x-request-id" in answer.headers
    assert isinstance(three.post(route, content=photo).json(), list)  # the default stays JSON


def test_accept_header_and_json_parameter_and_errors(three: TestClient) -> None:
    import base64

    photo = encode(photo_like(320, 240, seed=9))
    assert (
        three.post("/classify", content=photo, headers={"accept": "image/png"}).headers["content-type"]
        == "image/png"
    )
    assert (
        three.post("/classify", content=photo, headers={"accept": "image/jpeg, */*"}).headers["content-type"]
        == "image/jpeg"
    )
    both = three.post("/classify", content=photo, headers={"accept": "application/json, image/png"})
    assert both.headers["content-type"] == "application/json"
    payload = {"inputs": base64.b64encode(photo).decode(), "parameters": {"render": "png", "top_k": 2}}
    assert three.post("/classify", json=payload).headers["content-type"] == "image/png"
    bad = three.post("/classify", content=photo, params={"render": "gif"})
    assert bad.status_code == 400 and "'render' must be png or jpeg" in bad.json()["error"]


def test_renders_upright_after_exif_orientation(three: TestClient) -> None:
    upright = photo_like(300, 400, seed=10)  # portrait as displayed
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned by 90 degrees: the viewer rotates it back
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), quality=95, exif=exif.tobytes())
    drawn = as_image(three.post("/classify", content=stored, params={"render": "png"}).content).convert("RGB")
    assert drawn.size == (300, 400)
    # the bottom half has no annotation: it is the photo, upright
    region = (0, 250, 300, 400)
    difference = np.abs(np.asarray(drawn.crop(region), float) - np.asarray(upright.crop(region), float))
    assert difference.mean() < 12  # JPEG noise on a noisy photo
    flipped = upright.transpose(Image.Transpose.ROTATE_180).crop(region)
    assert np.abs(np.asarray(drawn.crop(region), float) - np.asarray(flipped, float)).mean() > 30


def test_render_max_side_zero_draws_at_the_photos_size(model_dir: Path) -> None:
    with TestClient(create_app(make_settings(model_dir, render_max_side=0))) as client:
        wait_ready(client)
        big = encode(photo_like(1800, 1200, seed=11))
        assert as_image(client.post("/classify", content=big, params={"render": "jpeg"}).content).size == (
            1800,
            1200,
        )


def test_class_colors_are_stable_and_distinct() -> None:
    colors = [drawing.class_color(i) for i in range(21)]
    assert colors[0] == (0, 0, 0) and colors[1] == (128, 0, 0) and colors[15] == (192, 128, 128)  # VOC's map
    assert len(set(colors)) == 21
    assert colors == [drawing.class_color(i) for i in range(21)]


def test_segmentation_tints_each_class_and_leaves_background_clear() -> None:
    photo = Image.new("RGB", (200, 100), (100, 100, 100))
    label_ids = np.zeros((100, 200), dtype=np.int64)
    label_ids[:, 100:] = 15  # person
    drawn = np.asarray(segmentation.draw(photo, label_ids, ["background", *[f"c{i}" for i in range(1, 21)]]))
    expected = np.round(0.5 * 100 + 0.5 * np.array(drawing.class_color(15)))
    assert np.abs(drawn[10, 150].astype(int) - expected).max() <= 1  # tinted, above the legend
    assert tuple(drawn[10, 50]) == (100, 100, 100)  # background untouched
    assert not np.array_equal(drawn[95, 5], drawn[10, 50])  # the legend, bottom left


def test_detection_boxes_are_drawn_where_the_json_says() -> None:
    photo = Image.new("RGB", (400, 300), (90, 90, 90))
    results = [{"score": 0.9, "label": "dog", "box": {"xmin": 200, "ymin": 150, "xmax": 600, "ymax": 450}}]
    drawn = np.asarray(detection.draw(photo, results, (800, 600), ["background", "cat", "dog"]))
    color = drawing.bright(drawing.class_color(2))
    assert tuple(drawn[225, 100]) == color  # left edge, at half scale
    assert tuple(drawn[225, 300]) == color  # right edge
    assert tuple(drawn[200, 200]) == (90, 90, 90)  # inside the box: the photo
    assert tuple(drawn[20, 20]) == (90, 90, 90)  # elsewhere: the photo


def test_classification_panel_lists_the_top_k() -> None:
    photo = Image.new("RGB", (400, 300), (90, 90, 90))
    results = [{"label": "tabby", "score": 0.7}, {"label": "tiger cat", "score": 0.2}]
    drawn = np.asarray(classification.draw(photo, results))
    assert (drawn[:60, :100] != 90).any()  # the panel, top left
    assert (drawn[200:, 200:] == 90).all()  # the rest of the photo untouched


def test_demo_page_is_served_self_contained_and_open(model_dir: Path) -> None:
    import re

    with TestClient(create_app(make_settings(model_dir, api_tokens="page-token"))) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        html = page.text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from a CDN or elsewhere
        assert not re.search(
            r"localStorage|sessionStorage|document\.cookie", html
        )  # the token stays in memory
        for route in ROUTES:
            assert f'value="{route}"' in html  # it calls the public routes
        assert client.get("/models").status_code == 401  # while the API itself needs the token


@pytest.mark.parametrize(
    ("render", "accept", "expected"),
    [
        (None, "", None),
        (None, "*/*", None),
        (None, "image/png", "png"),
        (None, "image/jpeg, image/png", "jpeg"),
        (None, "image/png, application/json", None),
        (None, "image/png;q=0, application/json;q=0.5", None),
        (None, "image/png;q=0", None),  # q=0: "not acceptable", never chosen
        (None, "application/json;q=0, image/jpeg", "jpeg"),
        ("JPG", "application/json", "jpeg"),  # the parameter wins over the header
    ],
)
def test_answer_format_negotiation(render: object, accept: str, expected: str | None) -> None:
    assert answer_format(render, accept) == expected


def test_server_timing_lists_the_phases_in_milliseconds() -> None:
    assert server_timing({"decode": 0.0012, "inference": 0.5}) == "decode;dur=1.2, inference;dur=500.0"
