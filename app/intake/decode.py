"""Bytes -> RGB PIL image. The format is sniffed from the content; Content-Type is never trusted."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidInput, ServiceError, TooLarge, clip

_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# File names tools take for images (calibration folders, benchmark photos).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
Image.init()  # register every plugin now: Image.open(formats=...) only knows the loaded ones
# MPO (phone cameras: a JPEG with extra frames) has its own opener in some Pillow versions.
ACCEPTED_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF") if f in Image.OPEN)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """PIL's convert('RGB') clips 16/32-bit values at 255; scale them into 8 bits instead."""
    pixels = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(pixels, 0.0, 1.0 if pixels.max(initial=0) <= 1.0 else 255.0)
        scaled = scaled * (255.0 if scaled.max(initial=0) <= 1.0 else 1.0)
    elif image.mode == "I" and pixels.max(initial=0) <= 255 and pixels.min(initial=0) >= 0:
        scaled = pixels
    else:
        scaled = np.clip(pixels.astype(np.float64), 0, 65535) / 257.0
    grey = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is dropped as `transformers`' `load_image` drops it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(image)
    return image.convert("RGB")


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied; maybe reduced by a JPEG draft (see `decode`)
    size: tuple[int, int]  # (width, height) of the full image, orientation applied


# EXIF orientation tag -> the transpose that displays the stored pixels upright (as ImageOps.exif_transpose,
# which would also copy the image and rewrite its metadata: a millisecond per request for nothing).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations 5-8 turn the stored image by 90 degrees: its stored width is the displayed height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def decode(data: bytes, max_pixels: int, reduce_to: tuple[int, int] | None = None) -> DecodedImage:
    """Decode the first frame of an image file, apply its EXIF orientation, return it as RGB.

    `reduce_to` = (width, height), in displayed orientation: a JPEG at least twice that size in both
    dimensions is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT-domain scaling (`Image.draft`),
    never below `reduce_to`. That skips most of the work of decoding a 12 MP photo only to shrink it.
    Other formats are always decoded in full.

    Raises InvalidInput for empty, unknown, truncated or corrupt input; TooLarge when the image has more
    than `max_pixels` pixels (checked from the header, before any pixel is decoded).
    """
    if not data:
        raise InvalidInput("The request body is empty: send the image file's bytes.")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(
            f"The body is not a recognised image ({len(data)} bytes); send a {_FORMAT_NAMES} file."
        ) from None
    except Image.DecompressionBombError:
        raise TooLarge(f"The image has too many pixels (limit {max_pixels:,}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"The image is truncated or corrupt: {clip(str(exc), 200)}") from None

    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"The image has an invalid size {width}x{height}.")
    if width * height > max_pixels:
        raise TooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}."
        )
    try:
        image.seek(0)
        jpeg = image.format in ("JPEG", "MPO")
        # A JPEG's EXIF sits in its header, known before any pixel is decoded; other formats (PNG) may
        # keep it after the pixels, so theirs is read once the image is loaded.
        orientation = _orientation(image) if jpeg else 1
        if reduce_to is not None and jpeg:
            image.draft(None, reduce_to[::-1] if orientation in _TRANSPOSING_ORIENTATIONS else reduce_to)
        image.load()
        if not jpeg:
            orientation = _orientation(image)
        transposed = orientation in _TRANSPOSING_ORIENTATIONS
        if orientation in _ORIENTATION_TRANSPOSE:
            image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
        return DecodedImage(to_rgb(image), (height, width) if transposed else (width, height))
    except ServiceError:
        raise
    except Image.DecompressionBombError:
        raise TooLarge(f"The image has too many pixels (limit {max_pixels:,}).") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
        raise InvalidInput(
            f"The {image.format or ''} image is truncated or corrupt: {clip(str(exc), 200)}"
        ) from None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """`decode` at full resolution, for tools that want the image itself."""
    return decode(data, max_pixels).image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag; 1 (as stored) when absent or unreadable: the pixels are still fine."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, AttributeError):
        return 1
