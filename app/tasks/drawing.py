"""What every task's annotated image (`render=png|jpeg`) shares: the format asked for, the photo, colours,
fonts, the legend, and encoding. Each task draws its own answer (`draw` in its module), with Pillow only.

The photo is decoded again at the render size (reduced JPEG decoding makes that cheap for big photos),
upright after its EXIF orientation, and drawn at most `max_side` pixels on its longest side. Colours
come from the class id (PASCAL VOC's colour map), so a class keeps its colour across images and calls.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from app.errors import InvalidInput, shown
from app.intake.decode import decode

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "image/png": "png", "image/jpeg": "jpeg"}
FORMAT_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}
PANEL = (0, 0, 0, 170)  # translucent black behind text
TEXT = (255, 255, 255, 255)


def render_format(parameter: object) -> str:
    """The image format a `render` parameter names (png, jpeg, jpg, or their media types)."""
    if not isinstance(parameter, str) or parameter.lower() not in _ALIASES:
        raise InvalidInput(f"Parameter 'render' must be png or jpeg, got {shown(parameter)}.")
    return _ALIASES[parameter.lower()]


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
def text_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def text_size(image: Image.Image) -> int:
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


def bright(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A class colour lifted so that boxes and their black text stay readable on any photo."""
    return tuple(min(255, 96 + c) for c in color)  # type: ignore[return-value]


def legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """A colour swatch and a name per entry, bottom left."""
    if not entries:
        return image
    size = text_size(image)
    face = text_font(size)
    line = round(size * 1.4)
    pad = size // 2
    entries = entries[: max(1, (image.height - 2 * pad) // line)]
    width = pad * 3 + size + max(round(face.getlength(name)) for name, _ in entries)
    height = pad * 2 + line * len(entries)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    top = max(0, image.height - height)
    draw.rectangle((0, top, min(width, image.width), image.height), fill=PANEL)
    for n, (name, color) in enumerate(entries):
        y = top + pad + n * line
        draw.rectangle((pad, y + 2, pad + size, y + 2 + size), fill=(*color, 255), outline=TEXT)
        draw.text((pad * 2 + size, y), name, font=face, fill=TEXT)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", compress_level=1)  # fastest level: see docs/performance.md
    return buffer.getvalue()
