"""Stop time: seconds from SIGTERM to exit of an idle `mvit serve` (after a burst of requests), and to the
last process it started being gone (Ray's, with `--ray`). Runs are interleaved between the variants.

    python -m benchmarks.stop_time models/mobilevitv2-0.5-imagenet1k-256-random --runs 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from app.cpus import cpu_model
from benchmarks._common import command_line, photo_jpeg, start_server

VARIANTS = {
    "mvit serve": [],
    "mvit serve --ray": ["--ray"],
    "mvit serve --ray --replicas 2": ["--ray", "--replicas", "2"],
}


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux's /proc)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        for children in Path(f"/proc/{pending.pop()}/task").glob("*/children"):
            try:
                numbers = [int(child) for child in children.read_text().split()]
            except OSError:
                continue
            found.update(numbers)
            pending.extend(numbers)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_once(model: str, flags: list[str]) -> tuple[float, float, int]:
    """(seconds to exit, seconds until the last child is gone, exit status)."""
    server, url = start_server("--model", model, "--log-level", "warning", *flags, timeout=300)
    photo = photo_jpeg(640, 480)
    with ThreadPoolExecutor(4) as pool:
        statuses = set(
            pool.map(
                lambda _: httpx.post(f"{url}/classify", content=photo, timeout=60).status_code, range(16)
            )
        )
    if statuses != {200}:
        raise SystemExit(f"the burst got {statuses}")
    time.sleep(1)  # idle
    children = descendants(server.pid)
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    status = server.wait(timeout=120)
    exited = time.monotonic() - started
    while any(map(alive, children)) and time.monotonic() - started < 60:
        time.sleep(0.02)
    return exited, time.monotonic() - started, status


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a classification model folder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    print(f"$ {command_line()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs")
    results: dict[str, list[tuple[float, float, int]]] = {variant: [] for variant in args.variants}
    for _ in range(args.runs):
        for variant in args.variants:
            results[variant].append(stop_once(str(Path(args.model).resolve()), VARIANTS[variant]))
    for variant, runs in results.items():
        exits = ", ".join(f"{run[0]:.2f}" for run in runs)
        gone = ", ".join(f"{run[1]:.2f}" for run in runs)
        print(
            f"{variant}: exit after median {statistics.median(r[0] for r in runs):.2f} s (runs {exits}); last child "
            f"gone after median {statistics.median(r[1] for r in runs):.2f} s (runs {gone}); "
            f"exit statuses {sorted({r[2] for r in runs})}"
        )


if __name__ == "__main__":
    sys.exit(main())
