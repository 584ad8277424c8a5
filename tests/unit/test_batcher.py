"""The per-model batcher that the HTTP layer feeds."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.errors import ModelUnavailable, QueueFull, ShuttingDown
from app.runtime import batcher as batcher_module
from app.runtime.batcher import Batcher
from app.runtime.threads import name_os_thread


def doubling(batch: np.ndarray) -> dict[str, np.ndarray]:
    return {"out": batch * 2, "sum": batch.reshape(len(batch), -1).sum(axis=1)}


def test_concurrent_requests_are_batched_and_each_gets_its_own_slice() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def slow(batch: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)
        return doubling(batch)

    async def scenario() -> list:
        worker = Batcher("m", slow, max_batch_size=4, on_batch=sizes.append)
        worker.start()
        first = asyncio.ensure_future(worker.submit(np.full((2, 2), 0.0)))
        await asyncio.sleep(0.05)  # the worker is now busy with `first`
        rest = [asyncio.ensure_future(worker.submit(np.full((2, 2), float(i)))) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, *rest)
        await worker.stop()
        return results

    results = asyncio.run(scenario())
    assert sizes == [1, 4, 2]
    for i, result in enumerate(results):
        assert np.array_equal(result.outputs["out"], np.full((2, 2), 2.0 * i))
        assert result.outputs["sum"] == 4.0 * i
    assert results[1].batch_size == 4 and results[1].queue_seconds > 0.04


def test_different_shapes_are_not_stacked() -> None:
    sizes: list[int] = []

    async def scenario() -> None:
        worker = Batcher("m", doubling, max_batch_size=8, on_batch=sizes.append)
        worker.start()
        shapes = [(2, 2), (2, 2), (3, 3), (3, 3), (2, 2)]
        results = await asyncio.gather(*(worker.submit(np.ones(s)) for s in shapes))
        assert [r.outputs["out"].shape for r in results] == shapes
        await worker.stop()

    asyncio.run(scenario())
    assert sum(sizes) == 5 and len(sizes) >= 3


def test_cancelled_work_is_never_computed() -> None:
    computed: list[float] = []
    release = threading.Event()

    def record(batch: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)
        computed.extend(batch[:, 0].tolist())
        return {"out": batch}

    async def scenario() -> None:
        worker = Batcher("m", record, max_batch_size=8)
        worker.start()
        busy = asyncio.ensure_future(worker.submit(np.array([0.0])))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(worker.submit(np.array([1.0])))
        kept = asyncio.ensure_future(worker.submit(np.array([2.0])))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected while queued
        release.set()
        await asyncio.gather(busy, kept)
        await worker.stop()

    asyncio.run(scenario())
    assert computed == [0.0, 2.0]


def test_backend_errors_reach_every_caller_and_the_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return doubling(batch)

    async def scenario() -> None:
        worker = Batcher("m", flaky)
        worker.start()
        with pytest.raises(RuntimeError, match="boom"):
            await worker.submit(np.ones(1))
        assert (await worker.submit(np.ones(1))).outputs["out"][0] == 2.0
        await worker.stop()

    asyncio.run(scenario())


def test_a_backend_answering_the_wrong_batch_size_fails_that_batch_not_the_loop() -> None:
    def short(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"out": batch[:1] * 2} if len(batch) > 1 else doubling(batch)

    async def scenario() -> None:
        worker = Batcher("m", short, max_batch_size=2, max_queue_delay_ms=1_000)
        worker.start()
        pair = [asyncio.ensure_future(worker.submit(np.ones(1))) for _ in range(2)]
        for outcome in await asyncio.wait_for(asyncio.gather(*pair, return_exceptions=True), 5):
            assert isinstance(outcome, RuntimeError) and "a batch of 2 with {'out': 1} items" in str(outcome)
        assert worker.running and worker.failure is None
        await worker.stop()

    asyncio.run(scenario())


def test_a_dead_loop_answers_its_jobs_and_every_later_one_at_once(caplog: pytest.LogCaptureFixture) -> None:
    deaths: list[BaseException] = []

    async def scenario() -> None:
        worker = Batcher("m", doubling, on_death=deaths.append)

        async def broken_collect(first: object) -> None:
            raise RuntimeError("injected bug")

        worker._collect = broken_collect  # type: ignore[method-assign]
        worker.start()
        with pytest.raises(ModelUnavailable, match="injected bug"):
            await asyncio.wait_for(worker.submit(np.ones(1)), 5)
        assert not worker.running and worker.failure == "RuntimeError: injected bug"
        with pytest.raises(ModelUnavailable):
            worker.refuse_if_unavailable()
        with pytest.raises(ModelUnavailable):
            await asyncio.wait_for(worker.submit(np.ones(1)), 0.5)
        await worker.stop()

    asyncio.run(scenario())
    assert [str(exc) for exc in deaths] == ["injected bug"]
    died = [record for record in caplog.records if "batcher of model m died" in record.getMessage()]
    assert len(died) == 1 and died[0].exc_info is not None


def test_stop_answers_the_running_batch_and_every_held_job() -> None:
    """Held: the job the loop waits with for a free instance (it came as the leftover of another shape),
    jobs still queued behind it; the running batch finishes with its result."""
    release = threading.Event()

    def gated(batch: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)
        return doubling(batch)

    async def scenario() -> None:
        worker = Batcher("m", gated, max_batch_size=4, max_queue_delay_ms=60_000)
        worker.start()
        running = asyncio.ensure_future(worker.submit(np.ones(1)))
        await asyncio.sleep(0.02)
        leftover = asyncio.ensure_future(worker.submit(np.ones(2)))  # another shape ends the first batch
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(worker.submit(np.ones(2))) for _ in range(2)]
        await asyncio.sleep(0.02)
        stopping = asyncio.ensure_future(worker.stop())
        await asyncio.sleep(0.02)
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert (await running).outputs["out"][0] == 2.0
        for job in (leftover, *queued):
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(job, 1)
        with pytest.raises(ShuttingDown):
            await worker.submit(np.ones(1))

    asyncio.run(scenario())


def test_stop_answers_jobs_waiting_for_their_batch_to_fill() -> None:
    async def scenario() -> None:
        worker = Batcher("m", doubling, max_batch_size=4, max_queue_delay_ms=60_000)
        worker.start()
        collecting = [asyncio.ensure_future(worker.submit(np.ones(1))) for _ in range(2)]
        await asyncio.sleep(0.05)  # the loop holds both, waiting up to a minute for two more
        await asyncio.wait_for(worker.stop(), 5)
        for job in collecting:
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(job, 1)

    asyncio.run(scenario())


def test_batches_are_stacked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    stacked_on: list[str] = []
    real_stack = np.stack

    def recording_stack(arrays: list[np.ndarray]) -> np.ndarray:
        stacked_on.append(threading.current_thread().name)
        return real_stack(arrays)

    monkeypatch.setattr(batcher_module.np, "stack", recording_stack)

    async def scenario() -> None:
        worker = Batcher("m", doubling, max_batch_size=2, max_queue_delay_ms=1_000)
        worker.start()
        await asyncio.gather(*(worker.submit(np.ones(1)) for _ in range(2)))
        await worker.stop()

    asyncio.run(scenario())
    assert len(stacked_on) == 1 and stacked_on[0].startswith("infer-m")


def test_queue_delay_waits_for_a_batch_to_fill_and_zero_does_not() -> None:
    async def batch_sizes(delay_ms: float) -> list[int]:
        sizes: list[int] = []
        worker = Batcher("m", doubling, max_batch_size=8, max_queue_delay_ms=delay_ms, on_batch=sizes.append)
        worker.start()
        jobs = []
        for i in range(3):  # three requests 20 ms apart
            jobs.append(asyncio.ensure_future(worker.submit(np.full(2, float(i)))))
            await asyncio.sleep(0.02)
        results = await asyncio.gather(*jobs)
        assert [r.outputs["out"][0] for r in results] == [0.0, 2.0, 4.0]
        await worker.stop()
        return sizes

    assert asyncio.run(batch_sizes(0)) == [1, 1, 1]
    assert asyncio.run(batch_sizes(500)) == [3]


def test_admission_is_bounded_and_released() -> None:
    async def scenario() -> None:
        worker = Batcher("m", doubling, max_queue_size=2)
        with worker.admit(), worker.admit():
            assert worker.pending == 2
            with pytest.raises(QueueFull) as full, worker.admit():
                pass
            assert full.value.limit == 2 and full.value.retry_after_s >= 1
        assert worker.pending == 0
        with worker.admit():  # places come back when requests finish, also by exception
            pass
        with pytest.raises(ValueError), worker.admit():
            raise ValueError
        assert worker.pending == 0

    asyncio.run(scenario())


def test_instances_run_batches_side_by_side_and_a_lone_request_gets_every_thread() -> None:
    lock = threading.Lock()
    running = {"now": 0, "most": 0}
    calls: list[str] = []
    release = threading.Event()

    def tracked(kind: str):  # type: ignore[no-untyped-def]
        def infer(batch: np.ndarray) -> dict[str, np.ndarray]:
            with lock:
                calls.append(kind)
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            release.wait(5)
            with lock:
                running["now"] -= 1
            return doubling(batch)

        return infer

    async def scenario() -> None:
        worker = Batcher(
            "m", tracked("all threads"), max_batch_size=8, instances=2, infer_on_instance=tracked("instance")
        )
        worker.start()
        with worker.admit():
            release.set()  # alone: one call on every thread
            assert (await worker.submit(np.ones(2))).outputs["out"][0] == 2.0
        release.clear()

        async def request(value: float) -> float:
            with worker.admit():
                return float((await worker.submit(np.full(2, value))).outputs["out"][0])

        jobs = [asyncio.ensure_future(request(float(i))) for i in range(6)]
        await asyncio.sleep(0.1)
        assert running["now"] == 2  # two instances busy at once, the rest waiting
        release.set()
        assert await asyncio.gather(*jobs) == [2.0 * i for i in range(6)]
        await worker.stop()

    asyncio.run(scenario())
    assert calls[0] == "all threads" and set(calls[1:]) == {"instance"}
    assert running["most"] == 2


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_pool_threads_carry_their_names_at_the_os_level() -> None:
    """`top -H` tells decode threads from inference threads (benchmarks/cpu_per_request.py relies on it)."""

    def os_name() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    with ThreadPoolExecutor(1, thread_name_prefix="decode", initializer=name_os_thread) as pool:
        assert pool.submit(os_name).result() == "decode_0"
    worker = Batcher("m", lambda batch: {"y": batch})
    try:
        assert worker._executor.submit(os_name).result() == "infer-m_0"
    finally:
        worker._executor.shutdown()
