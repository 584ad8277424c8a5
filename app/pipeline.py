"""One request's path: bytes -> image -> tensor -> (worker batch) -> task output, with phase timings."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import render
from app.imaging import decode
from app.preprocess import preprocess
from app.registry import ServedModel


@dataclass(frozen=True)
class RenderRequest:
    """Answer with the annotated photo instead of JSON."""

    format: str  # png | jpeg
    max_side: int


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    media_type: str


@dataclass
class Timings:
    """Seconds per phase: decode, preprocess, queue, inference, postprocess."""

    seconds: dict[str, float] = field(default_factory=dict)

    def server_timing(self) -> str:
        """The `Server-Timing` header value (milliseconds), readable by browsers' network panels."""
        return ", ".join(f"{phase};dur={seconds * 1000:.1f}" for phase, seconds in self.seconds.items())


def prepare(
    model: ServedModel, image_bytes: bytes, max_pixels: int, timings: Timings
) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes -> model input tensor and the image's full (width, height). Runs on a decode thread."""
    started = time.perf_counter()
    decoded = decode(image_bytes, max_pixels, model.min_decode_size)
    decoded_at = time.perf_counter()
    tensor = preprocess(decoded.image, model.preprocessing, decoded.size)
    timings.seconds["decode"] = decoded_at - started
    timings.seconds["preprocess"] = time.perf_counter() - decoded_at
    return tensor, decoded.size


async def run(
    model: ServedModel,
    image_bytes: bytes,
    raw_parameters: dict[str, Any],
    pool: Executor,
    max_pixels: int,
    timings: Timings,
    render_as: RenderRequest | None = None,
) -> list[dict[str, Any]] | RenderedImage:
    params = model.task.validate(raw_parameters, model)  # cheap: refuse bad parameters before decoding
    loop = asyncio.get_running_loop()
    tensor, size = await loop.run_in_executor(pool, prepare, model, image_bytes, max_pixels, timings)
    if model.worker is None:
        raise RuntimeError(f"model {model.id} has no running worker")
    result = await model.worker.submit(tensor)
    timings.seconds["queue"] = result.queue_seconds
    timings.seconds["inference"] = result.inference_seconds
    started = time.perf_counter()
    if render_as is not None:
        try:
            return await loop.run_in_executor(
                pool, annotate, model, image_bytes, result.outputs, size, params, render_as, max_pixels
            )
        finally:
            timings.seconds["render"] = time.perf_counter() - started
    try:
        if model.task.cheap_postprocess:
            return model.task.postprocess(result.outputs, size, model, params)
        return await loop.run_in_executor(pool, model.task.postprocess, result.outputs, size, model, params)
    finally:
        timings.seconds["postprocess"] = time.perf_counter() - started


def annotate(
    model: ServedModel,
    image_bytes: bytes,
    outputs: dict[str, np.ndarray],
    size: tuple[int, int],
    params: Any,
    render_as: RenderRequest,
    max_pixels: int,
) -> RenderedImage:
    """The photo, decoded again at the render size, with the answer drawn on it. Runs on a decode thread."""
    photo = render.load_photo(image_bytes, size, render_as.max_side, max_pixels)
    drawn = render.render(model.task.name, photo, outputs, size, model, params)
    return RenderedImage(render.encode(drawn, render_as.format), render.MEDIA_TYPES[render_as.format])


def predict(
    model: ServedModel, image_bytes: bytes, raw_parameters: dict[str, Any], max_pixels: int
) -> list[dict[str, Any]]:
    """The same path without HTTP, queue or batching (`mvit predict`)."""
    params = model.task.validate(raw_parameters, model)
    tensor, size = prepare(model, image_bytes, max_pixels, Timings())
    outputs = model.backend.infer(tensor[None])
    return model.task.postprocess({k: v[0] for k, v in outputs.items()}, size, model, params)
