"""The segmentation masks' PNG encoder: valid PNGs that any decoder reads back to the exact mask."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.tasks.segmentation import encode_png, label_map


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """A mask shaped like a segmenter's: one class of a label map from smooth random logits."""
    logits = np.random.default_rng(seed).normal(size=(5, 12, 16)).astype(np.float32)
    labels = label_map(logits, height, width)
    return ((labels == labels[height // 2, width // 2]) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "mask",
    [
        blobs(480, 640, 0),
        blobs(375, 500, 1),
        blobs(3, 1, 2),
        np.zeros((1, 1), np.uint8),
        np.full((7, 300), 255, np.uint8),
        (np.indices((33, 65)).sum(axis=0) % 2 * 255).astype(np.uint8),  # worst case: no runs at all
    ],
    ids=["640x480", "500x375", "1x3", "1x1", "all-255", "checkerboard"],
)
def test_masks_decode_to_themselves(mask: np.ndarray) -> None:
    png = base64.b64decode(encode_png(mask))
    image = Image.open(io.BytesIO(png))
    image.load()  # Pillow checks every chunk's CRC
    assert (image.format, image.mode, image.size) == ("PNG", "L", (mask.shape[1], mask.shape[0]))
    assert np.array_equal(np.asarray(image), mask)


def test_the_file_is_the_plain_png_it_claims_to_be() -> None:
    """Read without Pillow: chunk order, lengths and CRCs, the header, and the raw rows."""
    mask = blobs(48, 64, 3)
    png = base64.b64decode(encode_png(mask))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, body = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        offset += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (64, 48, 8, 0, 0, 0, 0)
    rows = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(48, 65)
    assert not rows[:, 0].any()  # filter type None on every row
    assert np.array_equal(rows[:, 1:], mask)


def test_it_is_smaller_than_pillows_png_for_a_mask() -> None:
    mask = blobs(480, 640, 4)
    pillow = io.BytesIO()
    Image.fromarray(mask).save(pillow, format="PNG", compress_level=1)
    assert len(base64.b64decode(encode_png(mask))) < len(pillow.getvalue())


@pytest.mark.parametrize(
    "mask",
    [np.zeros((0, 5), np.uint8), np.zeros((4, 4), bool), np.zeros((4, 4, 1), np.uint8)],
    ids=["empty", "bool", "3-D"],
)
def test_what_is_not_a_mask_is_refused(mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="non-empty 2-D uint8"):
        encode_png(mask)
