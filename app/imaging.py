"""Bytes -> RGB PIL image. The format is sniffed from the content; Content-Type is never trusted."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ApiError, bad_request, too_large

_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
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


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame of an image file, apply its EXIF orientation, return it as RGB.

    Raises ApiError: 400 for empty, unknown, truncated or corrupt input; 413 when the image has more
    than `max_pixels` pixels (checked from the header, before any pixel is decoded).
    """
    if not data:
        raise bad_request("The request body is empty: send the image file's bytes.")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise bad_request(
            f"The body is not a recognised image ({len(data)} bytes); send a {_FORMAT_NAMES} file."
        ) from None
    except Image.DecompressionBombError:
        raise too_large(f"The image has too many pixels (limit {max_pixels:,}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise bad_request(f"The image could not be read: {exc}") from None

    width, height = image.size
    if width <= 0 or height <= 0:
        raise bad_request(f"The image has an invalid size {width}x{height}.")
    if width * height > max_pixels:
        raise too_large(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}."
        )
    try:
        image.seek(0)
        image.load()
        image = _apply_exif_orientation(image)
        return to_rgb(image)
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise too_large(f"The image has too many pixels (limit {max_pixels:,}).") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
        raise bad_request(f"The {image.format or ''} image is truncated or corrupt: {exc}") from None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, AttributeError):
        # Unreadable EXIF: the pixels are fine, keep them as stored rather than refusing the image.
        return image
