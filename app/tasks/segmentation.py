"""Semantic segmentation: low-resolution logits -> per-class PNG masks at the original image size.

The reference (transformers' image-segmentation pipeline) upsamples the logits bilinearly to the image
size and takes the argmax. For a 12 MP photo and 21 classes that is ~1 GB of float32. We get the same
labels with bounded memory: where the four low-resolution cells around an output pixel share one argmax
class, the bilinear mix of their logits has that argmax too (every class's value is the same convex
combination, and the winner wins in each term), so only pixels near a class boundary need the
interpolated logits. Those are computed in row bands capped at a fixed number of floats.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from app.errors import InvalidInput, shown, unit_interval_param
from app.tasks import drawing
from app.tasks.base import ModelContext, Outputs, Task, TensorOutput

TASK = "image-segmentation"
PARAMETERS = ("subtask", "threshold", "mask_threshold", "overlap_mask_area_threshold")
# Most float32 values one band of boundary pixels may hold (x 4 corners): ~64 MB.
BAND_FLOATS = 4_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OVERLAY_OPACITY = 0.5


def parse_params(raw: Mapping[str, Any]) -> None:
    """Accept the pipeline's parameters; only `subtask=semantic` (or none) makes sense for DeepLabV3."""
    subtask = raw.get("subtask")
    if subtask is not None:
        if not isinstance(subtask, str) or subtask.lower() not in ("semantic", "instance", "panoptic"):
            raise InvalidInput(
                f"Parameter 'subtask' must be semantic, instance or panoptic; got {shown(subtask)}."
            )
        if subtask.lower() != "semantic":
            raise InvalidInput(
                f"subtask={shown(subtask)} is not available: this DeepLabV3 model is semantic-only "
                "(one mask per class, no instances). Use subtask=semantic or leave it out."
            )
    for name in PARAMETERS[1:]:
        if raw.get(name) is not None:
            unit_interval_param(name, raw[name])


def _source_index(
    out_size: int, in_size: int, align_corners: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like torch's bilinear: for each output index, the two input indices and the weight of the second."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
        src = scale * dst
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    low = np.minimum(src.astype(np.intp), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (src - low).astype(np.float32)


def label_map(logits: np.ndarray, height: int, width: int, align_corners: bool = False) -> np.ndarray:
    """argmax over classes of bilinear(logits, (height, width)), without materialising the upsampling."""
    return _label_map_and_counts(logits, height, width, align_corners)[0]


def _label_map_and_counts(
    logits: np.ndarray, height: int, width: int, align_corners: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The label map and how many pixels each class got (counted band by band: no full-size temporaries)."""
    classes, in_h, in_w = logits.shape
    dtype = np.uint8 if classes <= 256 else np.uint16
    coarse = logits.argmax(axis=0).astype(dtype)
    # uniform[i, j]: the four cells an output pixel with (y0, x0) = (i, j) mixes share one argmax.
    below = coarse[np.minimum(np.arange(in_h) + 1, in_h - 1)]
    right = np.minimum(np.arange(in_w) + 1, in_w - 1)
    uniform = (coarse == coarse[:, right]) & (coarse == below) & (coarse == below[:, right])
    y0, y1, wy = _source_index(height, in_h, align_corners)
    x0, x1, wx = _source_index(width, in_w, align_corners)
    repeats_x = np.bincount(x0, minlength=in_w)  # x0 is non-decreasing: columns come in runs
    channels_last = np.ascontiguousarray(logits.transpose(1, 2, 0))
    labels = np.empty((height, width), dtype=dtype)
    counts = np.zeros(classes, dtype=np.int64)
    rows_per_band = max(1, BAND_FLOATS // max(1, classes * width))
    for top in range(0, height, rows_per_band):
        rows = slice(top, min(height, top + rows_per_band))
        band = labels[rows]
        band[...] = np.repeat(coarse[y0[rows]], repeats_x, axis=1)
        ii, jj = np.nonzero(~np.repeat(uniform[y0[rows]], repeats_x, axis=1))
        if ii.size:
            band[ii, jj] = _boundary_labels(channels_last, rows, ii, jj, (y0, y1, wy), (x0, x1, wx))
        counts += np.bincount(band.reshape(-1), minlength=classes)
    return labels, counts


def _boundary_labels(
    channels_last: np.ndarray,
    rows: slice,
    ii: np.ndarray,
    jj: np.ndarray,
    ys: tuple[np.ndarray, np.ndarray, np.ndarray],
    xs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """Labels of the band pixels (ii, jj) whose four source cells disagree, from interpolated logits."""
    (y0, y1, wy), (x0, x1, wx) = ys, xs
    # Vertical mix of the band's source rows (small: rows x in_w x classes), then the horizontal mix at
    # the boundary pixels only.
    ly = wy[rows][:, None, None]
    mixed_rows = channels_last[y0[rows]] * (1 - ly) + channels_last[y1[rows]] * ly
    lx = wx[jj][:, None]
    values = mixed_rows[ii, x0[jj]] * (1 - lx) + mixed_rows[ii, x1[jj]] * lx
    return values.argmax(axis=1)


def encode_png(mask: np.ndarray) -> str:
    """A 0/255 8-bit grayscale PNG, base64 (no data: prefix).

    Written here rather than by Pillow: rows unfiltered and zlib's run-length strategy, which suit a mask's
    long runs of 0 and 255. Pillow tries every row filter and compresses generically: 2-4x slower for about
    3x the bytes on masks (docs/performance.md).
    """
    if mask.ndim != 2 or mask.dtype != np.uint8 or mask.size == 0:
        raise ValueError(f"a mask is a non-empty 2-D uint8 array, not {mask.dtype} {mask.shape}")
    height, width = mask.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # each row's filter type: None
    rows[:, 1:] = mask
    compressor = zlib.compressobj(level=1, strategy=zlib.Z_RLE)
    pixels = compressor.compress(rows.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, no interlace
    png = PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")
    return base64.b64encode(png).decode("ascii")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def segment(
    logits: np.ndarray, image_size: tuple[int, int], labels: list[str], align_corners: bool = False
) -> list[dict[str, Any]]:
    """`[{"label": str, "mask": base64 PNG}]`, one entry per class present, ascending class id."""
    width, height = image_size
    label_ids, counts = _label_map_and_counts(logits, height, width, align_corners)
    present = np.flatnonzero(counts)
    mask = np.empty((height, width), dtype=np.uint8)
    results = []
    for class_id in present:
        np.equal(label_ids, class_id, out=mask.view(bool))
        mask *= 255
        results.append({"label": labels[class_id], "mask": encode_png(mask)})
    return results


def draw(photo: Image.Image, label_ids: np.ndarray, labels: Sequence[str]) -> Image.Image:
    """Translucent per-class colours (background left clear) and a legend."""
    palette = np.array([drawing.class_color(i) for i in range(len(labels))], dtype=np.uint8)
    colors = Image.fromarray(palette[label_ids], "RGB")
    background = labels.index("background") if "background" in labels else -1
    tinted = Image.fromarray(((label_ids != background) * 255).astype(np.uint8), "L")
    out = Image.composite(Image.blend(photo, colors, OVERLAY_OPACITY), photo, tinted)
    counts = np.bincount(label_ids.ravel(), minlength=len(labels))
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] and i != background]
    return drawing.legend(out, [(labels[i], drawing.class_color(i)) for i in present])


def _label_ids_dtype(model: ModelContext) -> str:
    return "uint8" if len(model.labels) <= 256 else "int32"


class Segmentation(Task[None]):
    name = TASK
    cli_name = "segmentation"
    parameters = PARAMETERS

    def parse_params(self, raw: Mapping[str, Any], model: ModelContext) -> None:
        return parse_params(raw)

    def postprocess(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: None
    ) -> list[dict[str, Any]]:
        return segment(outputs["logits"], size, model.labels, model.upsample_align_corners)

    def tensors(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: None
    ) -> dict[str, np.ndarray]:
        width, height = size
        ids = label_map(outputs["logits"], height, width, model.upsample_align_corners)
        return {"label_ids": ids.astype(_label_ids_dtype(model), copy=False)}

    def tensor_outputs(self, model: ModelContext) -> tuple[TensorOutput, ...]:
        return (
            TensorOutput(
                "label_ids",
                _label_ids_dtype(model),
                (-1, -1),
                "the class id of every pixel, at the image's size (ids index the model's labels)",
            ),
        )

    def draw(
        self, photo: Image.Image, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: None
    ) -> Image.Image:
        ids = label_map(outputs["logits"], photo.height, photo.width, model.upsample_align_corners)
        return draw(photo, ids, model.labels)
