"""One request's path: bytes -> image -> tensor -> (batcher) -> task output, with each phase's duration.

Phases return their durations by value: nothing is shared with the decode threads, so a request that
times out or loses its client while a thread still works on it leaves no state behind to race with.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.intake.decode import decode
from app.intake.preprocess import preprocess
from app.runtime.models import ServedModel
from app.tasks import drawing

Answer = list[dict[str, Any]]  # the Hugging Face JSON
Tensors = dict[str, np.ndarray]  # the same answer as named arrays (`Task.tensors`)


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    media_type: str


@dataclass(frozen=True)
class Prepared:
    tensor: np.ndarray
    size: tuple[int, int]  # the image's full (width, height), orientation applied
    decode_s: float
    preprocess_s: float


@dataclass(frozen=True)
class Result:
    answer: Answer | Tensors | RenderedImage
    phases: dict[str, float]  # seconds: decode, preprocess, queue, inference, postprocess or render


def prepare(model: ServedModel, image_bytes: bytes, max_pixels: int) -> Prepared:
    """Bytes -> model input tensor. Runs on a decode thread."""
    started = time.perf_counter()
    decoded = decode(image_bytes, max_pixels, model.min_decode_size)
    decoded_at = time.perf_counter()
    tensor = preprocess(decoded.image, model.preprocessing, decoded.size)
    return Prepared(tensor, decoded.size, decoded_at - started, time.perf_counter() - decoded_at)


def annotate(
    model: ServedModel,
    image_bytes: bytes,
    outputs: dict[str, np.ndarray],
    size: tuple[int, int],
    params: Any,
    render_format: str,
    max_side: int,
    max_pixels: int,
) -> RenderedImage:
    """The photo, decoded again at the render size, with the answer drawn on it. Runs on a decode thread."""
    photo = drawing.load_photo(image_bytes, size, max_side, max_pixels)
    drawn = model.task.draw(photo, outputs, size, model, params)
    return RenderedImage(drawing.encode(drawn, render_format), drawing.MEDIA_TYPES[render_format])


class Pipeline:
    """The inference path, built once per service: the decode pool and the image limits it applies."""

    def __init__(self, pool: Executor, max_pixels: int, render_max_side: int) -> None:
        self.pool = pool
        self.max_pixels = max_pixels
        self.render_max_side = render_max_side

    async def run(
        self,
        model: ServedModel,
        image_bytes: bytes,
        raw_parameters: dict[str, Any],
        render_format: str | None = None,
        as_tensors: bool = False,
    ) -> Result:
        """One image through the model; the answer is HF JSON, named arrays (`as_tensors`), or the
        annotated image (`render_format`)."""
        params = model.task.validate(raw_parameters, model)  # cheap: refuse bad parameters before decoding
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.pool, prepare, model, image_bytes, self.max_pixels)
        batch = await model.batcher.submit(prepared.tensor)
        phases = {
            "decode": prepared.decode_s,
            "preprocess": prepared.preprocess_s,
            "queue": batch.queue_seconds,
            "inference": batch.inference_seconds,
        }
        started = time.perf_counter()
        answer: Answer | Tensors | RenderedImage
        postprocess = model.task.tensors if as_tensors else model.task.postprocess
        if render_format is not None:
            answer = await loop.run_in_executor(
                self.pool,
                annotate,
                model,
                image_bytes,
                batch.outputs,
                prepared.size,
                params,
                render_format,
                self.render_max_side,
                self.max_pixels,
            )
            phases["render"] = time.perf_counter() - started
        elif model.task.cheap_postprocess:
            answer = postprocess(batch.outputs, prepared.size, model, params)
            phases["postprocess"] = time.perf_counter() - started
        else:
            answer = await loop.run_in_executor(
                self.pool, postprocess, batch.outputs, prepared.size, model, params
            )
            phases["postprocess"] = time.perf_counter() - started
        return Result(answer, phases)


def predict(
    model: ServedModel, image_bytes: bytes, raw_parameters: dict[str, Any], max_pixels: int
) -> Answer:
    """The same path without HTTP, queue or batching (`mvit predict`)."""
    params = model.task.validate(raw_parameters, model)
    prepared = prepare(model, image_bytes, max_pixels)
    outputs = model.backend.infer(prepared.tensor[None])
    return model.task.postprocess({k: v[0] for k, v in outputs.items()}, prepared.size, model, params)
