"""The per-model dynamic batcher: admission with a bounded count, an asyncio queue, inference threads.

A request `admit()`s itself once its body is in: at most `max_queue_size` requests may be held per model
at once, counted from then to the answer (decode, preprocessing, waiting for a batch, inference, output).
An overloaded model also refuses new work before reading a body (`refuse_if_full`), so a full queue costs
callers nothing but the round trip, and slow uploads never hold a place. Admitted requests `submit()` a
preprocessed array and await their slice of a batch output.

The batching loop takes the oldest job plus whatever else is waiting with the same shape, up to
`max_batch_size`. With `max_queue_delay_ms` > 0 it waits up to that long (counted from the oldest job's
arrival in the queue) for a batch to fill, as Triton's dynamic batcher does; 0 runs whatever is waiting.
The backend runs on the batcher's own threads, one per execution instance, so the event loop never
blocks; with `instances` > 1, that many batches run at once, each on its share of the inference threads.
Jobs whose caller has gone (timed out, disconnected: the awaiting future is cancelled) are dropped
before they reach the backend.

Every submitted job gets an answer. Until a batch takes it, a job is `_held`: when the loop dies (a bug,
never a backend error, which fails only its batch) or the batcher stops, every held job gets the error
(ModelUnavailable, ShuttingDown) at once, and so does every later `submit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.errors import ModelUnavailable, QueueFull, ShuttingDown
from app.runtime.lifecycle import RETRY_AFTER_DRAINING_S
from app.runtime.threads import name_os_thread

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    outputs: dict[str, np.ndarray]
    queue_seconds: float
    inference_seconds: float
    batch_size: int


@dataclass(eq=False)  # compared and hashed by identity: jobs are held in a set
class _Job:
    inputs: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued_at: float


class Batcher:
    def __init__(
        self,
        name: str,
        infer: InferFn,
        max_batch_size: int = 1,
        max_queue_delay_ms: float = 0.0,
        max_queue_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
        instances: int = 1,
        infer_on_instance: InferFn | None = None,
        on_death: Callable[[BaseException], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._on_death = on_death
        self._on_pending = on_pending
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.instances = instances if infer_on_instance is not None else 1
        self._infer_on_instance = infer_on_instance or infer
        self._executor = ThreadPoolExecutor(
            max_workers=self.instances, thread_name_prefix=f"infer-{name}", initializer=name_os_thread
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failure: str | None = None  # why the loop died, once it has
        self._held: set[_Job] = set()  # submitted, not yet in a batch: the queue, and jobs the loop holds
        self._batches: set[asyncio.Task[None]] = set()
        self._busy = 0  # instances running a batch
        self._instance_freed = asyncio.Event()
        self._admitted = 0
        self._seconds_per_item = 0.05  # running estimate of inference time per request, for Retry-After

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admitted

    def retry_after_seconds(self) -> int:
        """A whole number of seconds after which the current backlog should have drained."""
        return max(1, math.ceil(self._admitted * self._seconds_per_item / self.instances))

    def refuse_if_full(self, places: int = 1) -> None:
        """Raise QueueFull when `admit(places)` would."""
        if self._admitted + places > self.max_queue_size:
            raise QueueFull(self.name, self.max_queue_size, self.retry_after_seconds())

    @contextlib.contextmanager
    def admit(self, places: int = 1) -> Iterator[None]:
        """Hold `places` of the model's `max_queue_size` places (one per image) for the rest of a request,
        or raise QueueFull."""
        self.refuse_if_full(places)
        self._count_admitted(places)
        try:
            yield
        finally:
            self._count_admitted(-places)

    def _count_admitted(self, change: int) -> None:
        self._admitted += change
        if self._on_pending is not None:
            self._on_pending(self._admitted)

    @property
    def running(self) -> bool:
        """The batching loop is alive (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    def refuse_if_unavailable(self) -> None:
        """Raise ModelUnavailable once the loop has died, ShuttingDown once the batcher is stopping."""
        if self.failure is not None:
            raise ModelUnavailable(self.name, self.failure)
        if self._stopping:
            raise ShuttingDown(RETRY_AFTER_DRAINING_S)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop taking jobs; batches already running finish and answer, every held job gets ShuttingDown."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._batches, return_exceptions=True)
        self._answer_held(ShuttingDown(RETRY_AFTER_DRAINING_S))
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: np.ndarray) -> BatchResult:
        self.refuse_if_unavailable()
        if self._task is None:
            raise RuntimeError(f"the batcher of {self.name} was never started")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        job = _Job(inputs, future, time.perf_counter())
        self._held.add(job)
        self._queue.put_nowait(job)
        try:
            return await future
        finally:
            self._held.discard(job)

    def _answer_held(self, error: Exception) -> None:
        for job in self._held:
            if not job.future.done():
                job.future.set_exception(error)
        self._held.clear()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the loop itself; without this the model would hang every caller
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error("the batcher of model %s died; it answers 503 until restarted", self.name, exc_info=exc)
            self._answer_held(ModelUnavailable(self.name, self.failure))
            if self._on_death is not None:
                self._on_death(exc)

    async def _next_job(self, deadline: float) -> _Job | None:
        """A queued job whose caller still waits; None once the queue is empty and `deadline` has passed."""
        while True:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return None
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    return None
            else:
                job = self._queue.get_nowait()
            if not job.future.done():
                return job

    async def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """`first` plus queued jobs of the same shape; also returns a job of another shape, if one came."""
        batch = [first]
        deadline = first.enqueued_at + self.max_queue_delay_ms / 1000
        limit = self.max_batch_size
        if self.max_queue_delay_ms == 0:  # leave the other instances their share of what is waiting
            limit = min(limit, math.ceil((1 + self._queue.qsize()) / self.instances))
        while len(batch) < limit:
            job = await self._next_job(deadline)
            if job is None:
                break
            if job.inputs.shape != first.inputs.shape:
                return batch, job
            batch.append(job)
        return batch, None

    async def _instance_available(self) -> None:
        while self._busy >= self.instances:
            self._instance_freed.clear()
            await self._instance_freed.wait()

    async def _loop(self) -> None:
        leftover: _Job | None = None
        while True:
            first = leftover or await self._queue.get()
            leftover = None
            await self._instance_available()
            if first.future.done():
                continue
            batch, leftover = await self._collect(first)
            batch = [job for job in batch if not job.future.done()]
            if not batch:
                continue
            # A request with the model to itself runs on every thread (lowest latency); under load each
            # instance runs its own batch on its share of the threads (highest throughput).
            alone = self._busy == 0 and self._admitted <= len(batch)
            taken = self.instances if alone else 1
            infer = self._infer if alone else self._infer_on_instance
            self._busy += taken
            task = asyncio.get_running_loop().create_task(self._execute(batch, infer, taken))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _execute(self, batch: list[_Job], infer: InferFn, instances_taken: int) -> None:
        """Run one batch and answer each of its jobs: its slice of the outputs, or the error."""
        self._held.difference_update(batch)
        started = time.perf_counter()
        try:
            inputs = [job.inputs for job in batch]
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, stack_and_run, infer, inputs
            )
            elapsed = time.perf_counter() - started
            results = [
                BatchResult(
                    outputs={name: value[i] for name, value in outputs.items()},
                    queue_seconds=started - job.enqueued_at,
                    inference_seconds=elapsed,
                    batch_size=len(batch),
                )
                for i, job in enumerate(batch)
            ]
        except Exception as exc:
            log.exception("inference failed for model %s (batch of %d)", self.name, len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._busy -= instances_taken
            self._instance_freed.set()
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * elapsed / len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)


def stack_and_run(infer: InferFn, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One batch on an inference thread: stacking megabytes of input is work the event loop must not do."""
    stacked = inputs[0][None] if len(inputs) == 1 else np.stack(inputs)
    outputs = infer(stacked)
    wrong = {name: len(value) for name, value in outputs.items() if len(value) != len(inputs)}
    if wrong:
        raise RuntimeError(f"the backend answered a batch of {len(inputs)} with {wrong} items")
    return outputs
