"""Per-model inference worker: an asyncio queue drained by one loop that runs batches on one thread.

Requests `submit()` a preprocessed array and await its slice of the batch output. The loop takes
whatever is waiting (up to `max_batch_size`, same input shape), stacks it, and runs the backend in a
dedicated thread, so the event loop never blocks and the backend never runs two batches at once.
Work whose caller has gone away (cancelled future) is dropped before it reaches the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class WorkerResult:
    outputs: dict[str, np.ndarray]
    queue_seconds: float
    inference_seconds: float
    batch_size: int


@dataclass
class _Job:
    inputs: np.ndarray
    future: asyncio.Future[WorkerResult]
    enqueued_at: float


class InferenceWorker:
    def __init__(
        self,
        name: str,
        infer: InferFn,
        max_batch_size: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._infer = infer
        self.max_batch_size = max_batch_size
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"worker-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError(f"model {self.name} is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: np.ndarray) -> WorkerResult:
        if self._task is None:
            raise RuntimeError(f"worker for {self.name} is not running")
        future: asyncio.Future[WorkerResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(inputs, future, time.perf_counter()))
        return await future

    def _next_batch(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """Take `first` plus what is already queued with the same shape; return the batch and a leftover."""
        batch = [first]
        while len(batch) < self.max_batch_size and not self._queue.empty():
            job = self._queue.get_nowait()
            if job.future.done():
                continue
            if job.inputs.shape != first.inputs.shape:
                return batch, job
            batch.append(job)
        return batch, None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        leftover: _Job | None = None
        while True:
            first = leftover or await self._queue.get()
            batch, leftover = self._next_batch(first)
            batch = [job for job in batch if not job.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                stacked = np.stack([job.inputs for job in batch])
                outputs = await loop.run_in_executor(self._executor, self._infer, stacked)
            except Exception as exc:
                log.exception("inference failed for model %s (batch of %d)", self.name, len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            if self._on_batch is not None:
                self._on_batch(len(batch))
            for i, job in enumerate(batch):
                if not job.future.done():
                    job.future.set_result(
                        WorkerResult(
                            outputs={name: value[i] for name, value in outputs.items()},
                            queue_seconds=started - job.enqueued_at,
                            inference_seconds=elapsed,
                            batch_size=len(batch),
                        )
                    )
