"""A corpus of hostile and awkward image uploads, each with the statuses the service may answer.

Used by the test suite (tests/api/test_hostile.py) and by benchmarks/soak.py. Everything is generated here, in
memory, from Pillow and hand-written headers: truncated and corrupt files, headers that declare billions
of pixels (decompression bombs), a GIF whose canvas is far larger than its one frame, 20000x2 strips
(a naive shortest-edge resize of one allocates gigabytes), 16-bit, CMYK, palette + transparency,
multi-frame files, broken EXIF.

    python -m benchmarks.hostile_images OUT_DIR     # write the corpus as files, to try with curl
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OK = frozenset({200})
BAD = frozenset({400})
TOO_BIG = frozenset({413})


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    expected: frozenset[int]  # what the service may answer; never a 5xx


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    pixels = pixels + rng.integers(-20, 20, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes, extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + extra
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_bomb() -> bytes:
    """A 1-bit 40000x40000 PNG (1.6 billion pixels) whose zlib stream is all zeros: ~200 KB on the wire."""
    width = height = 40_000
    row = b"\x00" * (1 + width // 8)
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    return _png(width, height, 1, 0, b"".join(chunks) + compressor.flush())


def _gif_huge_canvas() -> bytes:
    """A GIF whose logical screen is 65535x65535 around one 1x1 frame."""
    frame = _save(Image.new("P", (1, 1)), "GIF")
    return frame[:6] + struct.pack("<HH", 65535, 65535) + frame[10:]


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF header is rewritten to declare another size."""
    data = bytearray(_save(_photo(16, 16), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_with_size(width: int, height: int) -> bytes:
    """A little-endian TIFF header declaring a huge image with one tiny strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd_offset = 8 + 16
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", ifd_offset) + b"\x00" * 16 + ifd + b"\x00\x00\x00\x00"


def _sixteen_bit_png() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")  # mode I;16


def _palette_with_transparency() -> bytes:
    image = _photo(64, 48).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(image, "PNG", transparency=3)


def _multi_frame(fmt: str) -> bytes:
    frames = [_photo(48, 32, seed) for seed in range(3)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:])


def _broken_exif_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9999  # not an orientation
    return _save(_photo(64, 48), "JPEG", exif=exif.tobytes())


def _garbage_exif() -> bytes:
    data = _save(_photo(64, 48), "JPEG")
    app1 = b"Exif\x00\x00" + b"MM\x00*\xff\xff\xff\xf0" + b"\xde\xad" * 20  # IFD offset far past the end
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _corrupt_middle() -> bytes:
    data = bytearray(_save(_photo(320, 240), "JPEG"))
    rng = np.random.default_rng(7)
    middle = len(data) // 2
    data[middle : middle + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    return bytes(data)


def _text_chunk_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MB of text."""
    image_data = _save(_photo(32, 32), "PNG")
    text = b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)
    iend = image_data.rfind(b"IEND") - 4
    return image_data[:iend] + _png_chunk(b"zTXt", text) + image_data[iend:]


_BUILDERS: list[tuple[str, Callable[[], bytes], frozenset[int]]] = [
    ("empty", lambda: b"", BAD),
    ("random_bytes", lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), BAD),
    ("html_not_an_image", lambda: b"<html><body>hello</body></html>", BAD),
    ("svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', BAD),
    ("truncated_jpeg", lambda: _save(_photo(320, 240), "JPEG")[:1500], BAD),
    ("truncated_png", lambda: _save(_photo(320, 240), "PNG")[:2000], BAD),
    ("jpeg_header_only", lambda: _save(_photo(320, 240), "JPEG")[:200], BAD),
    ("bmp_bogus_header", lambda: b"BM" + b"\xff" * 60, BAD),
    ("corrupt_jpeg_middle", _corrupt_middle, frozenset({200, 400})),  # libjpeg may conceal the damage
    ("png_bomb_40000x40000", _png_bomb, TOO_BIG),
    ("png_header_100000x100000", lambda: _png(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 64)), TOO_BIG),
    ("jpeg_header_65500x65500", lambda: _jpeg_with_size(65_500, 65_500), TOO_BIG),
    ("tiff_header_100000x100000", lambda: _tiff_with_size(100_000, 100_000), TOO_BIG),
    ("gif_canvas_65535x65535", _gif_huge_canvas, TOO_BIG),
    ("png_text_chunk_bomb", _text_chunk_bomb, frozenset({200, 400})),  # Pillow caps text chunks
    ("png_zero_width", lambda: _png(0, 10, 8, 2, zlib.compress(b"")), BAD),
    ("strip_20000x2", lambda: _save(_photo(20_000, 2), "PNG"), OK),
    ("strip_2x20000", lambda: _save(_photo(2, 20_000), "PNG"), OK),
    ("one_pixel", lambda: _save(_photo(1, 1), "PNG"), OK),
    ("png_16bit", _sixteen_bit_png, OK),
    ("jpeg_cmyk", lambda: _save(_photo(64, 48).convert("CMYK"), "JPEG"), OK),
    ("png_palette_transparency", _palette_with_transparency, OK),
    ("png_grey_alpha", lambda: _save(_photo(64, 48).convert("LA"), "PNG"), OK),
    (
        "tiff_float",
        lambda: _save(
            Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), "F"), "TIFF"
        ),
        OK,
    ),
    ("gif_multi_frame", lambda: _multi_frame("GIF"), OK),
    ("tiff_multi_frame", lambda: _multi_frame("TIFF"), OK),
    ("webp_multi_frame", lambda: _multi_frame("WEBP"), OK),
    ("jpeg_orientation_9999", _broken_exif_orientation, OK),
    ("jpeg_garbage_exif", _garbage_exif, OK),
]


def hostile_corpus() -> list[Hostile]:
    return [Hostile(name, build(), expected) for name, build, expected in _BUILDERS]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for item in hostile_corpus():
        path = out / f"{item.name}.bin"
        path.write_bytes(item.data)
        print(f"{path}  {len(item.data):>9,} bytes  expect {'/'.join(map(str, sorted(item.expected)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
