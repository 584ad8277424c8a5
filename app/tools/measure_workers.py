"""`mvit tune FOLDER --workers 1,2,4`: measure whole servers with each worker count, over HTTP on loopback,
and record the best for `mvit serve --workers auto`.

The backend's batch size and instances are measured on preprocessed batches (app/runtime/measure_tuning.py).
How many server processes a machine wants depends on what one process cannot do in parallel (HTTP,
decoding and post-processing hold its GIL), so it is measured end to end: `mvit serve --workers N` for
each count, on its own loopback port, driven by a closed-loop load (app/tools/load.py) of photo-sized
JPEGs. Every server starts once and stays up; in each round each is loaded in turn, in an order that
rotates by round, so that a noisy neighbour's spell falls on all of them. The load generator runs in this
process, on the same CPUs as the servers, as a co-located proxy would.

The choice: the fewest workers within TIE_MARGIN of the best throughput, compared round by round with
the fewest workers measured (each worker holds its own copy of the models).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np
from PIL import Image

from app.config import ServerSettings
from app.errors import CheckpointError
from app.repository import ModelDir
from app.repository.tuning import TuningRecord
from app.runtime.apply_tuning import served_file_sha256, service_key
from app.tools.load import LoadResult, closed_loop
from app.tools.serving import LOOPBACK, NotReady, free_port, loopback_url, mvit_serve, stop, wait_ready

# More workers must beat fewer by more than this to be chosen: closer figures are this machine's noise.
TIE_MARGIN = 0.03
PHOTO_SIZE = (640, 480)  # a phone photo scaled for upload; decoding it is part of what is measured
START_TIMEOUT_S = 300.0
# Settings the servers do not take from the tune command: each is given its own.
NOT_PASSED_ON = {"models", "model_repository", "host", "port", "workers"}


@dataclass(frozen=True)
class WorkerPlan:
    counts: list[int]
    concurrency: int  # connections, each sending its next request once answered
    seconds: float  # per server and round
    rounds: int
    warmup_s: float = 2.0


def photos(count: int = 4, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth shapes and grain, quality 90): their decoding costs what a photo's does."""
    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    bodies = []
    for _ in range(count):
        channels = [
            np.sin(x * rng.uniform(2, 12) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(2, 12))
            for _ in range(3)
        ]
        image = (np.stack(channels, axis=-1) * 90 + 128 + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def server_environment(settings: ServerSettings) -> dict[str, str]:
    """MVIT_ variables for what the operator set on the tune command (backend, precision, threads...)."""
    chosen = settings.model_dump(mode="json", include=settings.model_fields_set - NOT_PASSED_ON)
    environment = {}
    for name, value in chosen.items():
        if isinstance(value, list):
            value = ",".join(str(part) for part in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        environment[f"MVIT_{name.upper()}"] = str(value)
    return environment


class Servers:
    """One `mvit serve --workers N` per count, on loopback ports; stopped (SIGTERM, drained) on exit."""

    def __init__(self, model_dir: ModelDir, settings: ServerSettings, counts: list[int]) -> None:
        self.model_dir, self.settings, self.counts = model_dir, settings, counts
        self.ports: dict[int, int] = {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, IO[bytes]] = {}
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Servers:
        environment = {**os.environ, **server_environment(self.settings)}
        self.stack.callback(self.stop)
        for count in self.counts:
            self.ports[count] = port = free_port()
            self.logs[count] = self.stack.enter_context(tempfile.TemporaryFile())
            command = mvit_serve(
                "--model",
                str(self.model_dir.path),
                "--workers",
                str(count),
                "--log-level",
                "warning",
                port=port,
            )
            self.processes[count] = subprocess.Popen(
                command, env=environment, stdout=self.logs[count], stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def stop(self) -> None:
        for process in self.processes.values():
            try:
                stop(process)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait_ready(self) -> None:
        for count, process in self.processes.items():
            try:
                wait_ready(process, loopback_url(self.ports[count]), START_TIMEOUT_S)
            except NotReady as exc:
                raise CheckpointError(
                    f"`mvit serve --workers {count}` {exc}:\n{self.output(count)}"
                ) from None

    def output(self, count: int) -> str:
        log = self.logs[count]
        log.seek(0)
        return log.read().decode(errors="replace")[-4000:]


def load(port: int, bodies: list[bytes], plan: WorkerPlan, seconds: float) -> LoadResult:
    """POST / (the one served model) from `plan.concurrency` connections for `seconds`."""
    return asyncio.run(
        closed_loop(LOOPBACK, port, "/", bodies, plan.concurrency, seconds, max_requests=10**9)
    )


def measure_workers(
    model_dir: ModelDir,
    settings: ServerSettings,
    plan: WorkerPlan,
    command: str,
    progress: Callable[[str], None] = lambda line: None,
) -> TuningRecord:
    bodies = photos()
    results: dict[int, list[LoadResult]] = {count: [] for count in plan.counts}
    with Servers(model_dir, settings, plan.counts) as servers:
        servers.wait_ready()
        for count in plan.counts:
            load(servers.ports[count], bodies, plan, plan.warmup_s)
        for round_number in range(plan.rounds):
            shift = round_number % len(plan.counts)
            for count in plan.counts[shift:] + plan.counts[:shift]:
                result = load(servers.ports[count], bodies, plan, plan.seconds)
                if result.errors or not result.ok:
                    raise CheckpointError(
                        f"`mvit serve --workers {count}` answered {result.statuses}:\n{servers.output(count)}"
                    )
                results[count].append(result)
                progress(
                    f"round {round_number + 1}/{plan.rounds}: {count} worker(s): {result.throughput:.1f} req/s, "
                    f"p50 {result.percentile(50) * 1000:.1f} ms"
                )
    fewest = results[plan.counts[0]]
    measured = [row(count, results[count], fewest, plan.concurrency) for count in plan.counts]
    options = settings.model_options()
    return TuningRecord(
        service_key(options),
        {"workers": choose(measured)},
        measured,
        datetime.now(UTC).isoformat(timespec="seconds"),
        command,
        served_file_sha256(model_dir, options),
    )


def row(count: int, rounds: list[LoadResult], fewest: list[LoadResult], concurrency: int) -> dict[str, Any]:
    """One count's figures. `relative`: its throughput over the fewest workers', round by round (the two
    ran minutes apart at most, so a slow spell of the machine weighs on both), median and range."""
    throughputs = [result.throughput for result in rounds]
    ratios = [mine.throughput / theirs.throughput for mine, theirs in zip(rounds, fewest, strict=True)]
    every = LoadResult(latencies=[latency for result in rounds for latency in result.latencies])

    def percentile_ms(q: float) -> float:
        return round(every.percentile(q) * 1000, 1)

    return {
        "workers": count,
        "concurrency": concurrency,
        "requests_per_s": round(statistics.median(throughputs), 1),
        "requests_per_s_range": [round(min(throughputs), 1), round(max(throughputs), 1)],
        "relative": round(statistics.median(ratios), 3),
        "relative_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "p50_ms": percentile_ms(50),
        "p99_ms": percentile_ms(99),
    }


def choose(rows: list[dict[str, Any]]) -> int:
    """The fewest workers whose paired throughput (`relative`) is within TIE_MARGIN of the best."""
    best = max(r["relative"] for r in rows)
    return min(r["workers"] for r in rows if r["relative"] >= best * (1 - TIE_MARGIN))
