"""Image -> model input tensor, in PIL + NumPy (no torch, no transformers at serve time).

`Preprocessing` is read from a checkpoint's `preprocessor_config.json`. The steps and their order
reproduce `transformers`' `MobileViTImageProcessor`: shortest-edge resize with the configured PIL
resample, center crop (zero padding when the image is smaller than the crop), rescale, optional
normalisation, and the RGB->BGR channel flip that MobileViT checkpoints on the Hub were converted with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from app.errors import InvalidInput

# A resize whose output would have more pixels than this (a 20000x2 strip resized to a 256 px short side
# is 2.56 million x 256 = 2 GB) is done for the center-crop window alone. Below it, the whole image is
# resized then cropped, exactly as transformers does; no photo comes near it (at 256 px: 256:1 aspect).
MAX_RESIZED_PIXELS = 16_000_000

_RESAMPLE_NAMES = {
    Image.Resampling.NEAREST: "nearest",
    Image.Resampling.BOX: "box",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.HAMMING: "hamming",
    Image.Resampling.BICUBIC: "bicubic",
    Image.Resampling.LANCZOS: "lanczos",
}


def _size_field(value: Any, name: str) -> dict[str, int]:
    """Normalise the legacy int form and the dict form of `size` / `crop_size`."""
    if isinstance(value, int):
        return {"shortest_edge": value} if name == "size" else {"height": value, "width": value}
    if isinstance(value, dict):
        return {k: int(v) for k, v in value.items() if v is not None}
    raise ValueError(f"preprocessor_config.json: unsupported {name} {value!r}")


@dataclass(frozen=True)
class Preprocessing:
    """What turns a decoded RGB image into the float32 CHW array a model takes."""

    resize_shortest_edge: int | None = None
    resize_height_width: tuple[int, int] | None = None
    resample: int = int(Image.Resampling.BILINEAR)
    crop_height_width: tuple[int, int] | None = None
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool = True
    # Where a center crop starts when the margin is odd: "floor" as transformers does, or "round" (half
    # to even) as torchvision's CenterCrop, which ml-cvnets and timm evaluate with.
    crop_rounding: Literal["floor", "round"] = "floor"

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> Preprocessing:
        """Build from a Hugging Face image processor config, with `MobileViTImageProcessor`'s defaults."""
        shortest_edge = height_width = crop = None
        if config.get("do_resize", True):
            size = _size_field(config.get("size", {"shortest_edge": 224}), "size")
            if "shortest_edge" in size:
                shortest_edge = size["shortest_edge"]
            elif "height" in size and "width" in size:
                height_width = (size["height"], size["width"])
            else:
                raise ValueError(f"preprocessor_config.json: unsupported size {size!r}")
        if config.get("do_center_crop", True):
            crop_size = _size_field(config.get("crop_size", {"height": 256, "width": 256}), "crop_size")
            crop = (crop_size["height"], crop_size["width"])
        normalize = config.get("do_normalize", False)
        return cls(
            resize_shortest_edge=shortest_edge,
            resize_height_width=height_width,
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            crop_height_width=crop,
            rescale_factor=float(config.get("rescale_factor", 1 / 255))
            if config.get("do_rescale", True)
            else None,
            mean=tuple(config["image_mean"]) if normalize else None,
            std=tuple(config["image_std"]) if normalize else None,
            bgr=bool(config.get("do_flip_channel_order", True)),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The inverse of `from_hf_config`, as a `MobileViTImageProcessor` config."""
        config: dict[str, Any] = {
            "image_processor_type": "MobileViTImageProcessor",
            "do_resize": self.resize_shortest_edge is not None or self.resize_height_width is not None,
            "resample": self.resample,
            "do_center_crop": self.crop_height_width is not None,
            "do_rescale": self.rescale_factor is not None,
            "rescale_factor": self.rescale_factor if self.rescale_factor is not None else 1 / 255,
            "do_normalize": self.mean is not None,
            "do_flip_channel_order": self.bgr,
        }
        if self.resize_shortest_edge is not None:
            config["size"] = {"shortest_edge": self.resize_shortest_edge}
        elif self.resize_height_width is not None:
            config["size"] = {"height": self.resize_height_width[0], "width": self.resize_height_width[1]}
        if self.crop_height_width is not None:
            config["crop_size"] = {"height": self.crop_height_width[0], "width": self.crop_height_width[1]}
        if self.mean is not None:
            config["image_mean"], config["image_std"] = list(self.mean), list(self.std or ())
        return config

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """(height, width) of every tensor this produces, or None when it follows the image's aspect."""
        return self.crop_height_width or self.resize_height_width

    def describe(self) -> dict[str, Any]:
        info = asdict(self)
        info["resample"] = _RESAMPLE_NAMES.get(Image.Resampling(self.resample), str(self.resample))
        info["channel_order"] = "BGR" if self.bgr else "RGB"
        del info["bgr"]
        return info

    def min_decode_size(self, reduce_gap: float) -> tuple[int, int] | None:
        """The smallest (width, height) a decoder may reduce an image to and still leave `reduce_gap` times
        the resize step's resolution for it to filter down from; None when it must decode every pixel."""
        if reduce_gap <= 0:
            return None
        if self.resize_height_width is not None:
            height, width = self.resize_height_width
            return math.ceil(width * reduce_gap), math.ceil(height * reduce_gap)
        if self.resize_shortest_edge is not None:
            edge = math.ceil(self.resize_shortest_edge * reduce_gap)
            return edge, edge
        return None

    def crop_offset(self, margin: int) -> int:
        """Where a center crop starts along an axis whose size exceeds the crop by `margin`."""
        return margin // 2 if self.crop_rounding == "floor" else round(margin / 2)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, with transformers' rounding (the long side truncates)."""
        if self.resize_height_width is not None:
            return self.resize_height_width[1], self.resize_height_width[0]
        if self.resize_shortest_edge is None:
            return width, height
        short, long = sorted((width, height))
        new_short, new_long = self.resize_shortest_edge, int(self.resize_shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(pixels: np.ndarray, height: int, width: int, spec: Preprocessing) -> np.ndarray:
    """Center crop an HWC array; pad with zeros around it when it is smaller than the crop."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        padded = np.zeros((max(h, height), max(w, width), pixels.shape[2]), dtype=pixels.dtype)
        top, left = -(-(padded.shape[0] - h) // 2), -(-(padded.shape[1] - w) // 2)
        padded[top : top + h, left : left + w] = pixels
        pixels = padded
        h, w = pixels.shape[:2]
    top, left = spec.crop_offset(h - height), spec.crop_offset(w - width)
    return pixels[top : top + height, left : left + width]


def _resize_dropping_cropped_columns(
    image: Image.Image, size: tuple[int, int], spec: Preprocessing
) -> Image.Image:
    """`image.resize(size)`, less the columns the center crop will drop: the same pixels, less work.

    Pillow resizes in two passes, rounding to 8 bits in between, and for a photo's proportions the
    horizontal pass runs first; each output column of the vertical pass then reads only its own column.
    Running the passes as two calls and cutting the dropped columns between them gives what the one call
    gives, pixel for pixel, without filtering those columns vertically (docs/performance.md). Pillow 13 runs the vertical pass first when the height
    shrinks by more than twice as many pixels as the width (Resample.c); such images take the one call.
    """
    resample = Image.Resampling(spec.resample)
    width, height = size
    crop_width = spec.crop_height_width[1] if spec.crop_height_width is not None else width
    shrink_x, shrink_y = image.width - width, image.height - height
    if (
        resample == Image.Resampling.NEAREST  # one pass in Pillow
        or crop_width >= width
        or (shrink_y > 0 and shrink_y > 2 * shrink_x)
    ):
        return image.resize(size, resample=resample)
    if width != image.width:
        image = image.resize((width, image.height), resample=resample)
    left = spec.crop_offset(width - crop_width)
    image = image.crop((left, 0, left + crop_width, image.height))
    if height != image.height:
        image = image.resize((crop_width, height), resample=resample)
    return image


def _resize_crop_window(image: Image.Image, size: tuple[int, int], spec: Preprocessing) -> Image.Image:
    """Resize-then-center-crop for an extreme aspect ratio, computing only the pixels the crop keeps.

    Pillow resizes in two passes, horizontal then vertical, rounding to 8 bits in between. This runs the
    same two passes with `resize(box=...)` over the band of rows the crop's filter support reads, so memory
    is bounded by the crop instead of the resized image. Pillow takes the box in single precision, which
    moves the sample positions slightly: up to 2 grey levels apart from the full path on a few percent of
    pixels (tests/api/test_hostile.py). Only images no camera makes come here (see MAX_RESIZED_PIXELS).
    """
    width, height = size
    if (
        spec.crop_height_width is None
        or width < spec.crop_height_width[1]
        or height < spec.crop_height_width[0]
    ):
        raise InvalidInput(
            f"The image is {image.width}x{image.height}: resizing it for this model would make a "
            f"{width}x{height} image. Send an image with a less extreme aspect ratio."
        )
    crop_height, crop_width = spec.crop_height_width
    left, top = spec.crop_offset(width - crop_width), spec.crop_offset(height - crop_height)
    scale_x, scale_y = image.width / width, image.height / height
    x0, x1 = left * scale_x, (left + crop_width) * scale_x
    y0, y1 = top * scale_y, (top + crop_height) * scale_y
    # Rows the vertical filter reads: its support (3 for Lanczos, the widest) times the scale, plus one.
    margin = math.ceil(3 * max(scale_y, 1.0)) + 1
    first, last = max(0, math.floor(y0) - margin), min(image.height, math.ceil(y1) + margin)
    resample = Image.Resampling(spec.resample)
    band = image.crop((0, first, image.width, last))
    across = band.resize((crop_width, band.height), resample=resample, box=(x0, 0, x1, band.height))
    return across.resize(
        (crop_width, crop_height), resample=resample, box=(0, y0 - first, crop_width, y1 - first)
    )


def preprocess(
    image: Image.Image, spec: Preprocessing, full_size: tuple[int, int] | None = None
) -> np.ndarray:
    """RGB PIL image -> float32 array (3, H, W), ready to be stacked into a batch.

    `full_size` is the (width, height) of the image before a reduced decode (`app.intake.decode.decode`): the resize
    target follows from it, so a reduced decode lands on exactly the size a full decode would.
    """
    return to_model_input(resize_and_crop(image, spec, full_size), spec)


def resize_and_crop(
    image: Image.Image, spec: Preprocessing, full_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The pixel steps: RGB PIL image -> resized and center-cropped uint8 array (H, W, 3)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    size = spec.resized_size(*(full_size or image.size))
    if size[0] * size[1] > MAX_RESIZED_PIXELS:
        image = _resize_crop_window(image, size, spec)
    elif size != image.size:
        image = _resize_dropping_cropped_columns(image, size, spec)
    pixels = np.asarray(image)
    if spec.crop_height_width is not None:
        pixels = _center_crop(pixels, *spec.crop_height_width, spec)
    return pixels


def to_model_input(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The float pass: uint8 (H, W, 3) -> float32 (3, H, W), rescaled, normalised and flipped as configured."""
    channels = pixels.transpose(2, 0, 1)  # views: CHW, and BGR if asked; the float pass copies once
    if spec.bgr:
        channels = channels[::-1]
    out = np.empty(channels.shape, dtype=np.float32)
    factor = spec.rescale_factor or 1.0
    if factor == 1 / 255:
        # transformers computes float32(float64(v) * (1/255)); for every uint8 v that is the float32
        # quotient v / 255 (tests/unit/test_preprocess.py), which is what timm's ToTensor gives too.
        # Multiplying by float32(1/255) instead is off by one ulp for half of the values.
        np.divide(channels, np.float32(255), out=out)
    else:
        out[...] = channels.astype(np.float64) * factor
    if spec.mean is not None and spec.std is not None:
        out -= np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        out /= np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return out
