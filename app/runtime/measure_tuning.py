"""Measure a model's raw backend on this machine and choose the best serving configuration: `mvit tune`,
and `tune_at_start_s` (the server measures a model that has no record for this machine while it loads).

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

import collections
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from app.backends import Backend, load_backend
from app.config import ModelOptions
from app.repository import ModelDir
from app.repository.tuning import BATCH_SIZES, TuningRecord, write_record
from app.runtime.apply_tuning import Tuning, apply_record, best_row, machine_key, served_file_sha256

log = logging.getLogger(__name__)

# Tuning at start: a slow spell of a few seconds can fall on one configuration; the median of three
# rotated rounds outvotes it.
START_ROUNDS = 3


class TuningStopped(Exception):
    """The server began to shut down while it measured; nothing was recorded."""


def instance_counts_for(threads: int) -> list[int]:
    """The instance counts tried by default: 1, 2, 4 and every thread its own instance."""
    return sorted({n for n in (1, 2, 4, threads) if n <= threads})


@dataclass(frozen=True)
class Configuration:
    instances: int
    spinning: bool
    batch: int

    def option_values(self) -> dict[str, Any]:
        """As ModelOptions fields."""
        return {
            "max_batch_size": self.batch,
            "instances": self.instances,
            "onnx_allow_spinning": self.spinning,
        }


@dataclass(frozen=True)
class Plan:
    """What a tuning measures: the grid, and how long and how often each configuration runs."""

    batch_sizes: list[int]
    instance_counts: list[int]
    seconds: float  # per configuration and round; each backend's lone-request run takes half as long
    rounds: int  # over the whole grid, in rotated order; each figure is the median over rounds
    try_spinning: bool = False  # ONNX Runtime's spin policy too
    min_calls: int = 3  # per caller, however long that takes
    deadline: float | None = None  # time.perf_counter(): past it, what was measured so far decides

    def for_backend(self, backend: str) -> Plan:
        """The grid a backend has: torch's threads are per process, so one instance. Only ONNX Runtime has
        a spin policy to choose, and only on request: spinning wins raw runs but takes the cores the
        service's decode threads need."""
        return replace(
            self,
            instance_counts=[1] if backend == "torch" else self.instance_counts,
            try_spinning=self.try_spinning and backend == "onnx",
        )

    @property
    def spin_policies(self) -> list[bool]:
        return [False, True] if self.try_spinning else [False]


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
            **self.configuration.option_values(),
            "images_per_s": round(self.throughput, 2),
            "images_per_s_range": [round(min(self.throughputs), 2), round(max(self.throughputs), 2)],
            "lone_latency_ms": round(self.lone_latency_ms, 2),
        }


def timed_calls(
    backend: Backend, batch: np.ndarray, callers: int, seconds: float, min_calls: int = 3
) -> tuple[float, float]:
    """`callers` threads each running `batch` back to back for `seconds` (at least `min_calls` calls
    each), the way the batcher runs it: alone on every thread, or several at once on instances. Returns
    images per second and the median seconds per call."""
    infer: Callable[[np.ndarray], object] = backend.infer_on_instance if callers > 1 else backend.infer
    deadline = time.perf_counter() + seconds

    def caller(_: int) -> list[float]:
        times: list[float] = []
        while time.perf_counter() < deadline or len(times) < min_calls:
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
    options: ModelOptions,
    input_size: tuple[int, int],
    plan: Plan,
    progress: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> list[Measurement]:
    """Every configuration of `plan`, `plan.rounds` times, with the backends loaded once per (instances,
    spinning). Past `plan.deadline`, what was measured so far, at least one configuration. Once `stop` is
    set, TuningStopped."""
    # The largest batch as max_batch_size: on GPUs, torch captures CUDA graphs up to it.
    loading = {"max_batch_size": max(plan.batch_sizes)}
    backends = {
        (instances, spinning): load_backend(
            model_dir,
            options.model_copy(update={**loading, "instances": instances, "onnx_allow_spinning": spinning}),
        )
        for instances in plan.instance_counts
        for spinning in plan.spin_policies
    }
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, 3, *input_size), dtype=np.float32) for b in {1, *plan.batch_sizes}}
    results: dict[Configuration, Measurement] = {}
    # A lone request's latency depends on the backend, not on the batch size: every configuration of a
    # backend gets all of its rounds' figures, also where the deadline cut a round short.
    lone_ms: dict[tuple[int, bool], list[float]] = collections.defaultdict(list)

    def out_of_time() -> bool:
        if stop is not None and stop.is_set():
            raise TuningStopped
        return plan.deadline is not None and bool(results) and time.perf_counter() >= plan.deadline

    def measured() -> list[Measurement]:
        for entry in results.values():
            entry.lone_latencies_ms = lone_ms[entry.configuration.instances, entry.configuration.spinning]
        return list(results.values())

    for round_index in range(plan.rounds):
        for (_, spinning), backend in rotated(list(backends.items()), round_index):
            if out_of_time():
                return measured()
            backend.infer(inputs[1])  # first runs allocate
            lone = 1000 * timed_calls(backend, inputs[1], 1, plan.seconds / 2, plan.min_calls)[1]
            lone_ms[backend.instances, spinning].append(lone)
            for batch in rotated(plan.batch_sizes, round_index):
                if out_of_time():
                    return measured()
                configuration = Configuration(backend.instances, spinning, batch)
                throughput = timed_calls(
                    backend, inputs[batch], backend.instances, plan.seconds, plan.min_calls
                )[0]
                entry = results.setdefault(configuration, Measurement(configuration, [], []))
                entry.throughputs.append(throughput)
                progress(
                    f"round {round_index + 1}/{plan.rounds}: instances {backend.instances}, spinning "
                    f"{'on' if spinning else 'off'}, batch {batch}: {throughput:.1f} img/s, lone request {lone:.1f} ms"
                )
    return measured()


def choose(measurements: list[Measurement], latency_slack: float) -> Measurement:
    """The best throughput whose lone latency is within `latency_slack` of the best lone latency (the
    rule a server applies to the record's rows, `best_row`)."""
    rows = [m.row() for m in measurements]
    return measurements[rows.index(best_row(rows, latency_slack))]


def tune(
    model_dir: ModelDir,
    options: ModelOptions,
    input_size: tuple[int, int],
    plan: Plan,
    latency_slack: float,
    command: str,
    progress: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> tuple[TuningRecord, Measurement]:
    """Measure (see `measure`) the backend's part of `plan`, and choose; the record is the caller's to write
    (`write_record`)."""
    measurements = measure(model_dir, options, input_size, plan.for_backend(options.backend), progress, stop)
    best = choose(measurements, latency_slack)
    chosen = best.configuration.option_values()
    if options.backend != "onnx":
        del chosen["onnx_allow_spinning"]
    if options.backend == "torch":
        del chosen["instances"]
    record = TuningRecord(
        key=machine_key(options),
        chosen=chosen,
        measured=[m.row() for m in sorted(measurements, key=lambda m: -m.throughput)],
        tuned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command,
        artifact_sha256=served_file_sha256(model_dir, options),
        latency_slack=latency_slack,
    )
    return record, best


def seconds_per_configuration(budget_s: float, configurations: int, backends: int) -> float:
    """So that one round over the grid measures for about `budget_s`: each configuration runs this long,
    and each backend's lone-request run half as long."""
    return budget_s / (configurations + backends / 2)


def start_plan(budget_s: float, instance_counts: list[int], deadline: float) -> Plan:
    """`mvit tune`'s default grid, three rounds of it within about `budget_s`."""
    configurations = len(BATCH_SIZES) * len(instance_counts)
    return Plan(
        list(BATCH_SIZES),
        instance_counts,
        seconds_per_configuration(budget_s / START_ROUNDS, configurations, len(instance_counts)),
        rounds=START_ROUNDS,
        min_calls=1,  # a batch of 8 big images can take seconds on a small CPU
        deadline=deadline,
    )


def tune_at_start(
    model_dir: ModelDir,
    options: ModelOptions,
    input_size: tuple[int, int],
    stop: threading.Event | None = None,
    outdated: str | None = None,
    latency_slack: float = 0.25,
) -> tuple[ModelOptions, Tuning]:
    """`mvit tune`'s default grid, three rounds within about `options.tune_at_start_s` (backends loading
    included; past it, what was measured so far decides). The record goes into the model folder where it
    can (the next start on this machine reads it and measures nothing), and applies to this process in
    any case. Setting `stop` (the server shutting down) ends it within one configuration's run, with
    TuningStopped. `outdated`: why this machine's record does not apply, for the log.

    A batch size or instance count the operator set still gets the whole grid measured, so that the record
    holds for any later setting; the set value picks among its rows (`apply_record`). With nothing left to
    choose (both set; torch, or one thread, has one instance count), nothing is measured."""
    budget = options.tune_at_start_s
    instance_counts = [1] if options.backend == "torch" else instance_counts_for(options.inference_threads)
    grid = {"max_batch_size": BATCH_SIZES, "instances": instance_counts}
    set_here = [name for name in grid if name in options.model_fields_set]
    if all(name in set_here or len(values) == 1 for name, values in grid.items()):
        log.info("%s: not tuned at start: %s set explicitly", model_dir.model_id, " and ".join(set_here))
        return options, Tuning(machine_key(options), None, {}, outdated=outdated)
    why = outdated or "no tuning record for this machine"
    log.info("%s: %s; measuring for about %g s (MVIT_TUNE_AT_START_S)", model_dir.model_id, why, budget)
    started = time.perf_counter()
    record, best = tune(
        model_dir,
        options,
        input_size,
        start_plan(budget, instance_counts, deadline=started + budget),
        latency_slack=latency_slack,
        command=f"tuned at start (MVIT_TUNE_AT_START_S={budget:g})",
        progress=lambda line: log.debug("%s: %s", model_dir.model_id, line),
        stop=stop,
    )
    try:
        where = f"recorded in {write_record(model_dir.path, record)}"
    except OSError as exc:
        where = f"not recorded ({exc.strerror or exc}): this process only, the next start measures again"
    log.info(
        "%s: tuned in %.1f s (%d configurations): %s (%.1f img/s, lone request %.1f ms); %s",
        model_dir.model_id,
        time.perf_counter() - started,
        len(record.measured),
        record.chosen,
        best.throughput,
        best.lone_latency_ms,
        where,
    )
    return apply_record(model_dir, options, record)
