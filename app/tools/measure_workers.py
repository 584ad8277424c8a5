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

from PIL import Image

from app.config import ServerSettings
from app.errors import CheckpointError
from app.repository import ModelDir
from app.repository.tuning import TuningRecord
from app.runtime.apply_tuning import served_file_sha256, service_key
from app.runtime.measure_tuning import rotated
from app.tools.calibrate import procedural_photos
from app.tools.load import LoadResult, closed_loop
from app.tools.serving import LOOPBACK, NotReady, free_port, loopback_url, mvit_serve, stop, wait_ready

# More workers must beat fewer by more than this to be chosen: closer figures are this machine's noise.
TIE_MARGIN = 0.03
PHOTO_SIZE = (640, 480)  # a phone photo scaled for upload; decoding it is part of what is measured
START_TIMEOUT_S = 300.0
# Settings the servers do not take from the tune command: each is given its own (server_environment).
NOT_PASSED_ON = {
    "models", "model_repository", "host", "port", "workers",
    "api_tokens", "api_tokens_file", "tune_at_start_s", "max_queue_size",
}  # fmt: skip


@dataclass(frozen=True)
class WorkerPlan:
    counts: list[int]
    concurrency: int  # connections, each sending its next request once answered
    seconds: float  # per server and round
    rounds: int
    warmup_s: float = 2.0


def photos(count: int = 4, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs at PHOTO_SIZE, quality 90: their decoding costs what a photo's does."""
    bodies = []
    for photo in procedural_photos(count, seed):
        buffer = io.BytesIO()
        photo.resize(PHOTO_SIZE, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def server_environment(settings: ServerSettings, concurrency: int) -> dict[str, str]:
    """The measured servers' environment: this one's, with what the operator gave the tune command
    (backend, precision, threads...). They serve the load generator alone: no API tokens (it sends none),
    no tuning at start (every worker of every server would measure at once), and a queue that holds a
    request from every connection (a 429 would end the measurement)."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("MVIT_API_TOKENS")
    }
    chosen = settings.model_dump(mode="json", include=settings.model_fields_set - NOT_PASSED_ON)
    for name, value in chosen.items():
        if isinstance(value, list):
            value = ",".join(str(part) for part in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        environment[f"MVIT_{name.upper()}"] = str(value)
    environment["MVIT_TUNE_AT_START_S"] = "0"
    environment["MVIT_MAX_QUEUE_SIZE"] = str(max(settings.max_queue_size, concurrency))
    return environment


class Servers:
    """One `mvit serve --workers N` per count, on loopback ports, all up at once (the sum of the counts
    in processes, each with its copy of the model); stopped (SIGTERM, drained) on exit."""

    def __init__(self, model_dir: ModelDir, environment: dict[str, str], counts: list[int]) -> None:
        self.model_dir, self.environment, self.counts = model_dir, environment, counts
        self.ports: dict[int, int] = {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, IO[bytes]] = {}
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Servers:
        self.stack.callback(self.stop)
        try:
            for count in self.counts:
                self.ports[count] = port = free_port()
                self.logs[count] = self.stack.enter_context(tempfile.TemporaryFile())
                command = mvit_serve(
                    "--model", str(self.model_dir.path), "--workers", str(count), "--log-level", "warning",
                    port=port,
                )  # fmt: skip
                self.processes[count] = subprocess.Popen(
                    command, env=self.environment, stdout=self.logs[count], stderr=subprocess.STDOUT
                )
        except BaseException:  # those already started are stopped
            self.stack.close()
            raise
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
    with Servers(model_dir, server_environment(settings, plan.concurrency), plan.counts) as servers:
        servers.wait_ready()
        for count in plan.counts:
            load(servers.ports[count], bodies, plan, plan.warmup_s)
        for round_number in range(plan.rounds):
            for count in rotated(plan.counts, round_number):
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
