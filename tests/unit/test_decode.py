"""Image intake: formats sniffed from bytes, EXIF orientation, every PIL mode, clear errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from app.errors import InvalidInput, TooLarge
from app.intake.decode import decode, decode_image
from app.intake.preprocess import Preprocessing, preprocess
from tests.support import encode, photo_like

LIMIT = 10_000_000


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_formats_decode_to_rgb(fmt: str, kwargs: dict) -> None:
    source = photo_like(64, 48, seed=3)
    image = decode_image(encode(source, fmt, **kwargs), LIMIT)
    assert image.mode == "RGB" and image.size == (64, 48)
    if fmt in ("PNG", "WEBP", "BMP", "TIFF"):
        assert np.array_equal(np.asarray(image), np.asarray(source))


def test_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    image = decode_image(buf.getvalue(), LIMIT)
    assert image.getpixel((5, 5))[0] > 200 and image.getpixel((5, 5))[2] < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    # A 40x20 image: left half black, right half white. Orientations 5-8 swap width and height.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(data, LIMIT)
    expected = {1: (40, 20), 2: (40, 20), 3: (40, 20), 4: (40, 20)}.get(orientation, (20, 40))
    assert image.size == expected
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))  # Pillow's own reading of the tag
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(reference, dtype=int)).mean() < 8


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    grey = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (16, 1))
    if mode == "I;16":
        source = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "I":
        source = Image.fromarray(grey.astype(np.int32) * 257)
    elif mode == "F":
        source = Image.fromarray(grey.astype(np.float32) / 255.0)
    else:
        source = Image.fromarray(grey).convert(mode)
    fmt = {"CMYK": "TIFF", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    image = decode_image(encode(source, fmt), LIMIT)
    assert image.mode == "RGB" and image.size == (32, 16)
    if mode not in ("1",):
        # 16-bit and float data are scaled into 8 bits, not clipped to white.
        row = np.asarray(image)[0, :, 0].astype(int)
        assert row[0] < 10 and row[-1] > 240 and row[16] in range(100, 160)


def test_empty_body() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_image(b"", LIMIT)
    assert "empty" in err.value.message


def test_not_an_image() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_image(b"%PDF-1.7 this is a document, not a picture", LIMIT)
    assert "not a recognised image" in err.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_truncated(fmt: str) -> None:
    data = encode(photo_like(200, 150), fmt)
    with pytest.raises(InvalidInput) as err:
        decode_image(data[: len(data) // 2], LIMIT)
    assert isinstance(err.value, InvalidInput)


def test_corrupt_jpeg_body() -> None:
    data = bytearray(encode(photo_like(200, 150), "PNG"))
    data[200:400] = b"\x00" * 200  # inside the compressed IDAT stream
    with pytest.raises(InvalidInput) as err:
        decode_image(bytes(data), LIMIT)
    assert isinstance(err.value, InvalidInput)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge canvas: the classic decompression bomb shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (100_000, 100_000), (2**31 - 1, 2)])
def test_pixel_limit_is_413_before_decoding(width: int, height: int) -> None:
    with pytest.raises(TooLarge) as err:
        decode_image(png_header_only(width, height), LIMIT)
    assert isinstance(err.value, TooLarge)
    assert "limit" in err.value.message


# --- reduced JPEG decoding (libjpeg DCT scaling) ---------------------------------------------------


def test_a_big_jpeg_is_decoded_reduced_but_reports_its_full_size() -> None:
    data = encode(photo_like(2400, 1600, seed=4), "JPEG", quality=90)
    decoded = decode(data, LIMIT, reduce_to=(300, 300))
    assert decoded.size == (2400, 1600)
    assert decoded.image.size == (600, 400)  # 1/4: 1/8 would leave 200 rows, below the 300 asked for
    assert decode(data, LIMIT).image.size == (2400, 1600)  # no reduce_to: every pixel


def test_reduction_is_planned_in_displayed_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 2400x1600, shown 1600x2400
    data = encode(photo_like(2400, 1600, seed=5), "JPEG", quality=90, exif=exif.tobytes())
    decoded = decode(data, LIMIT, reduce_to=(400, 600))
    assert decoded.size == (1600, 2400)
    assert decoded.image.size == (400, 600)


@pytest.mark.parametrize(
    ("size", "fmt", "expected"),
    [
        ((640, 480), "JPEG", (640, 480)),  # not twice the target: decoded in full
        ((2400, 1600), "PNG", (2400, 1600)),  # only JPEG has DCT scaling
    ],
)
def test_no_reduction_when_it_cannot_help(size: tuple[int, int], fmt: str, expected: tuple[int, int]) -> None:
    decoded = decode(encode(photo_like(*size, seed=6), fmt), LIMIT, reduce_to=(300, 300))
    assert decoded.image.size == expected and decoded.size == size


@pytest.mark.slow
def test_reduced_decoding_stays_close_to_full_decoding() -> None:
    spec = Preprocessing(resize_shortest_edge=288, crop_height_width=(256, 256))
    data = encode(photo_like(4032, 3024, seed=7), "JPEG", quality=92)
    full = decode(data, 20_000_000)
    reduced = decode(data, 20_000_000, spec.min_decode_size(2.0))
    assert reduced.image.size == (1008, 756) and reduced.size == full.size
    levels = np.abs(preprocess(reduced.image, spec, reduced.size) - preprocess(full.image, spec)) * 255
    assert levels.mean() < 1.0 and levels.max() <= 16  # benchmarks/jpeg_reduce.py measures the bench photos
