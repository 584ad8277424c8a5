"""The inference path: phases return their durations; a request dropped mid-decode leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from app.intake.preprocess import Preprocessing
from app.runtime import pipeline
from app.runtime.batcher import BatchResult
from app.runtime.pipeline import Pipeline, RenderedImage
from app.tasks import TASKS
from tests.support import encode, photo_like


@dataclass
class FakeBatcher:
    submitted: list[np.ndarray] = field(default_factory=list)

    async def submit(self, inputs: np.ndarray) -> BatchResult:
        self.submitted.append(inputs)
        logits = np.linspace(-3, 3, 4, dtype=np.float32)
        return BatchResult({"logits": logits}, queue_seconds=0.25, inference_seconds=0.5, batch_size=1)


@dataclass
class FakeModel:
    """What the pipeline reads of a served model, for a 4-label classifier."""

    task: Any = TASKS["image-classification"]
    labels: list[str] = field(default_factory=lambda: ["a", "b", "c", "d"])
    preprocessing: Preprocessing = field(
        default_factory=lambda: Preprocessing(resize_shortest_edge=36, crop_height_width=(32, 32))
    )
    min_decode_size: tuple[int, int] | None = None
    batcher: FakeBatcher = field(default_factory=FakeBatcher)
    upsample_align_corners: bool = False


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_phases_are_returned_in_order_with_the_answer() -> None:
    model = FakeModel()
    with ThreadPoolExecutor(1) as pool:
        result = run(Pipeline(pool, 10_000_000, 100).run(model, encode(photo_like(64, 48)), {"top_k": 2}))
    logits = np.linspace(-3, 3, 4)
    softmax = np.exp(logits) / np.exp(logits).sum()
    assert result.answer == [
        {"label": "d", "score": pytest.approx(softmax[3])},
        {"label": "c", "score": pytest.approx(softmax[2])},
    ]
    assert list(result.phases) == ["decode", "preprocess", "queue", "inference", "postprocess"]
    assert result.phases["queue"] == 0.25 and result.phases["inference"] == 0.5
    assert all(seconds >= 0 for seconds in result.phases.values())
    assert model.batcher.submitted[0].shape == (3, 32, 32)


def test_render_replaces_postprocess() -> None:
    with ThreadPoolExecutor(1) as pool:
        result = run(Pipeline(pool, 10_000_000, 100).run(FakeModel(), encode(photo_like(64, 48)), {}, "png"))
    assert isinstance(result.answer, RenderedImage) and result.answer.media_type == "image/png"
    assert "render" in result.phases and "postprocess" not in result.phases


def test_a_request_dropped_while_its_image_decodes_shares_nothing_with_the_late_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old design wrote a shared timings dict from the decode thread while the request's `finally`
    read it; now the thread's durations only travel in its return value, which nobody awaits any more."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    real_preprocess = pipeline.preprocess

    def slow_preprocess(*args: Any) -> np.ndarray:
        started.set()
        release.wait(10)
        try:
            return real_preprocess(*args)
        finally:
            finished.set()

    monkeypatch.setattr(pipeline, "preprocess", slow_preprocess)
    model = FakeModel()

    async def dropped() -> None:
        with ThreadPoolExecutor(1) as pool:
            task = asyncio.ensure_future(
                Pipeline(pool, 10_000_000, 100).run(model, encode(photo_like(64, 48)), {})
            )
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
            task.cancel()  # what a deadline or a disconnect does
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()  # the decode thread goes on after its request is gone

    run(dropped())
    assert finished.wait(10)
    assert model.batcher.submitted == []  # the dropped request never reached the batcher
