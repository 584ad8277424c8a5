"""`mvit tune`: measure a model's raw backend on this machine and record the best serving configuration.

Like Triton's Model Analyzer, built in. Every configuration (instances, then batch sizes; with
`--try-spinning`, ONNX Runtime's spin policy too)
runs the backend exactly as the batcher does under load: `instances` callers at once, each running
batches of the given size on its share of the threads. A lone request's latency is measured too: alone,
the batcher runs it on every thread. The machine is shared and noisy, so the whole grid runs `rounds`
times in rotated order and each figure is the median over rounds.

The choice: the highest throughput among configurations whose lone latency stays within
`latency_slack` of the best lone latency (fewer threads per instance make a lone request slower). It is
written to the folder's tuning.json, keyed by CPU model, thread count, backend, precision and runtime
version (app/repository/tuning.py); `mvit serve` applies it where no setting says otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from app.backends import Backend, load_backend
from app.config import Settings
from app.repository import ModelDir
from app.repository.tuning import TuningRecord, write_record
from app.runtime.tuned import machine_key, served_file_sha256


@dataclass(frozen=True)
class Configuration:
    instances: int
    spinning: bool
    batch: int

    def settings(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.batch,
            "instances": self.instances,
            "onnx_allow_spinning": self.spinning,
        }


@dataclass
class Measurement:
    configuration: Configuration
    throughputs: list[float]  # images/s, one per round
    lone_latencies_ms: list[float]  # p50 of a lone batch-1 request, one per round

    @property
    def throughput(self) -> float:
        return statistics.median(self.throughputs)

    @property
    def lone_latency_ms(self) -> float:
        return statistics.median(self.lone_latencies_ms)

    def row(self) -> dict[str, Any]:
        return {
            **self.configuration.settings(),
            "images_per_s": round(self.throughput, 2),
            "images_per_s_range": [round(min(self.throughputs), 2), round(max(self.throughputs), 2)],
            "lone_latency_ms": round(self.lone_latency_ms, 2),
        }


def timed_calls(backend: Backend, batch: np.ndarray, callers: int, seconds: float) -> tuple[float, float]:
    """`callers` threads each running `batch` back to back for `seconds` (at least 3 calls each), the way
    the batcher runs it: alone on every thread, or several at once on instances. Returns images per
    second and the median seconds per call."""
    infer: Callable[[np.ndarray], object] = backend.infer_on_instance if callers > 1 else backend.infer
    deadline = time.perf_counter() + seconds

    def caller(_: int) -> list[float]:
        times: list[float] = []
        while time.perf_counter() < deadline or len(times) < 3:
            started = time.perf_counter()
            infer(batch)
            times.append(time.perf_counter() - started)
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        per_caller = list(pool.map(caller, range(callers)))
    wall = time.perf_counter() - started
    calls = [t for times in per_caller for t in times]
    return len(batch) * len(calls) / wall, statistics.median(calls)


def rotated(items: list[Any], by: int) -> Iterator[Any]:
    shift = by % len(items) if items else 0
    yield from items[shift:] + items[:shift]


def measure(
    model_dir: ModelDir,
    settings: Settings,
    input_size: tuple[int, int],
    batch_sizes: list[int],
    instance_counts: list[int],
    spin_policies: list[bool],
    seconds: float,
    rounds: int,
    progress: Callable[[str], None] = print,
) -> list[Measurement]:
    """Every configuration, `rounds` times, with the backends loaded once per (instances, spinning)."""
    # The largest batch as max_batch_size: on GPUs, torch captures CUDA graphs up to it.
    loading = {"max_batch_size": max(batch_sizes)}
    backends = {
        (instances, spinning): load_backend(
            model_dir,
            settings.model_copy(update={**loading, "instances": instances, "onnx_allow_spinning": spinning}),
        )
        for instances in instance_counts
        for spinning in spin_policies
    }
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, 3, *input_size), dtype=np.float32) for b in {1, *batch_sizes}}
    results: dict[Configuration, Measurement] = {}
    for round_index in range(rounds):
        for (_, spinning), backend in rotated(list(backends.items()), round_index):
            backend.infer(inputs[1])  # first runs allocate
            lone = 1000 * timed_calls(backend, inputs[1], 1, seconds / 2)[1]
            for batch in rotated(batch_sizes, round_index):
                configuration = Configuration(backend.instances, spinning, batch)
                throughput = timed_calls(backend, inputs[batch], backend.instances, seconds)[0]
                entry = results.setdefault(configuration, Measurement(configuration, [], []))
                entry.throughputs.append(throughput)
                entry.lone_latencies_ms.append(lone)
                progress(
                    f"round {round_index + 1}/{rounds}: instances {backend.instances}, spinning "
                    f"{'on' if spinning else 'off'}, batch {batch}: {throughput:.1f} img/s, lone request {lone:.1f} ms"
                )
    return list(results.values())


def choose(measurements: list[Measurement], latency_slack: float) -> Measurement:
    """The best throughput whose lone latency is within `latency_slack` of the best lone latency."""
    best_latency = min(m.lone_latency_ms for m in measurements)
    eligible = [m for m in measurements if m.lone_latency_ms <= best_latency * (1 + latency_slack)]
    return max(eligible, key=lambda m: (m.throughput, -m.configuration.batch))


def tune(
    model_dir: ModelDir,
    settings: Settings,
    input_size: tuple[int, int],
    batch_sizes: list[int],
    instance_counts: list[int],
    seconds: float,
    rounds: int,
    latency_slack: float,
    command: str,
    progress: Callable[[str], None] = print,
    try_spinning: bool = False,
) -> tuple[TuningRecord, Measurement]:
    """Measure, choose, and write the record into the model folder's tuning.json."""
    onnx = settings.backend == "onnx"
    # torch's threads are per process: one instance. Only ONNX Runtime has a spin policy to choose, and
    # only on request: spinning wins raw runs but takes the cores the service's decode threads need.
    instance_counts = [1] if settings.backend == "torch" else instance_counts
    spin_policies = [False, True] if onnx and try_spinning else [False]
    measurements = measure(
        model_dir,
        settings,
        input_size,
        batch_sizes,
        instance_counts,
        spin_policies,
        seconds,
        rounds,
        progress,
    )
    best = choose(measurements, latency_slack)
    chosen = best.configuration.settings()
    if not onnx:
        del chosen["onnx_allow_spinning"]
    if settings.backend == "torch":
        del chosen["instances"]
    record = TuningRecord(
        key=machine_key(settings),
        chosen=chosen,
        measured=[m.row() for m in sorted(measurements, key=lambda m: -m.throughput)],
        tuned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command,
        artifact_sha256=served_file_sha256(model_dir, settings),
    )
    write_record(model_dir.path, record)
    return record, best
