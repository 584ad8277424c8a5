"""Annotated images: a model's answer drawn on the caller's photo, with Pillow only.

    classification  the top-k labels with score bars, top left
    segmentation    translucent per-class colours (background left clear) and a legend
    detection       a box per object, labelled with its class and score

The photo is decoded again at the render size (reduced JPEG decoding makes that cheap for big photos),
upright after its EXIF orientation, and drawn at most `max_side` pixels on its longest side. Colours
come from the class id (PASCAL VOC's colour map), so a class keeps its colour across images and calls.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.errors import bad_request
from app.imaging import decode
from app.tasks import classification, detection, segmentation

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "image/png": "png", "image/jpeg": "jpeg"}
OVERLAY_OPACITY = 0.5
PANEL = (0, 0, 0, 170)  # translucent black behind text
TEXT = (255, 255, 255, 255)


def render_format(parameter: object, accept: str) -> str | None:
    """The image format asked for with `render=png|jpeg`, or an Accept header that prefers an image over
    JSON; None for the default JSON answer."""
    if parameter is not None:
        if not isinstance(parameter, str) or parameter.lower() not in _ALIASES:
            raise bad_request(f"Parameter 'render' must be png or jpeg, got {parameter!r}.")
        return _ALIASES[parameter.lower()]
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if "application/json" in wanted:
        return None
    return next((_ALIASES[media] for media in wanted if media in ("image/png", "image/jpeg")), None)


def class_color(class_id: int) -> tuple[int, int, int]:
    """PASCAL VOC's colour map: the class id's bits spread over the high bits of R, G and B."""
    red = green = blue = 0
    value = class_id
    for bit in range(7, -1, -1):
        red |= (value & 1) << bit
        green |= ((value >> 1) & 1) << bit
        blue |= ((value >> 2) & 1) << bit
        value >>= 3
    return red, green, blue


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _font_size(image: Image.Image) -> int:
    return max(12, round(max(image.size) / 55))


def fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longest side is at most `max_side` (0: unchanged)."""
    width, height = size
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return width, height
    return max(1, round(width * max_side / longest)), max(1, round(height * max_side / longest))


def load_photo(image_bytes: bytes, full_size: tuple[int, int], max_side: int, max_pixels: int) -> Image.Image:
    target = fit(full_size, max_side)
    photo = decode(image_bytes, max_pixels, reduce_to=target).image
    if photo.size != target:
        photo = photo.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return photo


def draw_classification(photo: Image.Image, results: Sequence[dict[str, Any]]) -> Image.Image:
    font_size = _font_size(photo)
    font = _font(font_size)
    line = round(font_size * 1.5)
    pad = font_size // 2
    bar_width = max(4 * font_size, photo.width // 4)
    texts = [f"{r['label'][:40]}  {r['score']:.1%}" for r in results]
    text_width = max((round(font.getlength(t)) for t in texts), default=0)
    panel_width = min(photo.width, pad * 3 + max(text_width, bar_width))
    overlay = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((0, 0, panel_width, pad + len(results) * (line + pad // 2 + 4) + pad), fill=PANEL)
    y = pad
    for text, result in zip(texts, results, strict=True):
        draw.text((pad, y), text, font=font, fill=TEXT)
        y += line
        score = min(max(float(result["score"]), 0.0), 1.0)
        draw.rectangle((pad, y, pad + bar_width, y + pad // 2 + 2), fill=(255, 255, 255, 60))
        draw.rectangle((pad, y, pad + round(bar_width * score), y + pad // 2 + 2), fill=(80, 200, 120, 255))
        y += pad // 2 + 4
    return Image.alpha_composite(photo.convert("RGBA"), overlay).convert("RGB")


def draw_detection(
    photo: Image.Image, results: Sequence[dict[str, Any]], full_size: tuple[int, int], labels: Sequence[str]
) -> Image.Image:
    scale_x, scale_y = photo.width / full_size[0], photo.height / full_size[1]
    font = _font(_font_size(photo))
    line_width = max(2, round(max(photo.size) / 400))
    class_ids = {label: i for i, label in enumerate(labels)}
    out = photo.copy()
    draw = ImageDraw.Draw(out)
    for result in sorted(results, key=lambda r: r["score"]):  # the most confident drawn last, on top
        box = result["box"]
        x0, y0 = box["xmin"] * scale_x, box["ymin"] * scale_y
        x1, y1 = box["xmax"] * scale_x, box["ymax"] * scale_y
        color = _bright(class_color(class_ids.get(result["label"], 0)))
        draw.rectangle((x0, y0, x1, y1), outline=color, width=line_width)
        tag = f"{result['label']} {result['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
        tag_height = bottom - top + 2 * line_width
        tag_y = y0 - tag_height if y0 - tag_height >= 0 else y0
        draw.rectangle((x0, tag_y, x0 + right - left + 2 * line_width, tag_y + tag_height), fill=color)
        draw.text((x0 + line_width, tag_y + line_width - top), tag, font=font, fill=(0, 0, 0))
    return out


def _bright(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A class colour lifted so that boxes and their black text stay readable on any photo."""
    return tuple(min(255, 96 + c) for c in color)  # type: ignore[return-value]


def draw_segmentation(photo: Image.Image, label_ids: np.ndarray, labels: Sequence[str]) -> Image.Image:
    palette = np.array([class_color(i) for i in range(len(labels))], dtype=np.uint8)
    colors = Image.fromarray(palette[label_ids], "RGB")
    background = labels.index("background") if "background" in labels else -1
    tinted = Image.fromarray(((label_ids != background) * 255).astype(np.uint8), "L")
    out = Image.composite(Image.blend(photo, colors, OVERLAY_OPACITY), photo, tinted)
    counts = np.bincount(label_ids.ravel(), minlength=len(labels))
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] and i != background]
    return _legend(out, [(labels[i], class_color(i)) for i in present])


def _legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    if not entries:
        return image
    font_size = _font_size(image)
    font = _font(font_size)
    line = round(font_size * 1.4)
    pad = font_size // 2
    entries = entries[: max(1, (image.height - 2 * pad) // line)]
    width = pad * 3 + font_size + max(round(font.getlength(name)) for name, _ in entries)
    height = pad * 2 + line * len(entries)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    top = max(0, image.height - height)
    draw.rectangle((0, top, min(width, image.width), image.height), fill=PANEL)
    for n, (name, color) in enumerate(entries):
        y = top + pad + n * line
        draw.rectangle((pad, y + 2, pad + font_size, y + 2 + font_size), fill=(*color, 255), outline=TEXT)
        draw.text((pad * 2 + font_size, y), name, font=font, fill=TEXT)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", compress_level=1)  # level 6 is 2-3x slower for ~10% fewer bytes
    return buffer.getvalue()


def render(
    task: str,
    photo: Image.Image,
    outputs: dict[str, np.ndarray],
    full_size: tuple[int, int],
    model: Any,
    params: Any,
) -> Image.Image:
    """The annotated photo for one image's model outputs (the same outputs the JSON answer comes from)."""
    if task == segmentation.TASK:
        label_ids = segmentation.label_map(
            outputs["logits"], photo.height, photo.width, model.upsample_align_corners
        )
        return draw_segmentation(photo, label_ids, model.labels)
    if task == classification.TASK:
        return draw_classification(photo, classification.classify(outputs["logits"], model.labels, params))
    if task == detection.TASK:
        found = model.detector.detect(outputs["logits"], outputs["box_regression"], params)
        return draw_detection(
            photo, detection.to_hf(found, full_size, model.labels, params), full_size, model.labels
        )
    raise ValueError(f"no renderer for task {task}")
