"""One request's path: bytes -> image -> tensor -> (worker batch) -> task output, with phase timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.imaging import decode_image
from app.preprocess import preprocess
from app.registry import ServedModel

T = TypeVar("T")


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)

    async def timed(self, phase: str, pool: Executor, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        finally:
            self.seconds[phase] = time.perf_counter() - started


async def run(
    model: ServedModel,
    image_bytes: bytes,
    raw_parameters: dict[str, Any],
    pool: Executor,
    max_pixels: int,
    timings: Timings,
) -> list[dict[str, Any]]:
    params = model.task.validate(raw_parameters, model)  # cheap: refuse bad parameters before decoding
    image = await timings.timed("decode", pool, decode_image, image_bytes, max_pixels)
    tensor = await timings.timed("preprocess", pool, preprocess, image, model.preprocessing)
    if model.worker is None:
        raise RuntimeError(f"model {model.id} has no running worker")
    result = await model.worker.submit(tensor)
    timings.seconds["queue"] = result.queue_seconds
    timings.seconds["inference"] = result.inference_seconds
    return await timings.timed(
        "postprocess", pool, model.task.postprocess, result.outputs, image.size, model, params
    )


def predict(
    model: ServedModel, image_bytes: bytes, raw_parameters: dict[str, Any], max_pixels: int
) -> list[dict[str, Any]]:
    """The same path without HTTP, queue or batching (`mvit predict`)."""
    params = model.task.validate(raw_parameters, model)
    image = decode_image(image_bytes, max_pixels)
    outputs = model.backend.infer(preprocess(image, model.preprocessing)[None])
    return model.task.postprocess({k: v[0] for k, v in outputs.items()}, image.size, model, params)
