"""Event-loop responsiveness under big bodies: GET /health latency while clients send big requests.

`concurrency` clients post `{"inputs": "<base64 of a PNG>"}` bodies (or `--form multipart` uploads) of
about `--body-mb` MB to /classify in a closed loop, while a probe thread asks GET /health every 10 ms;
the figures are the probe's latencies. Each `--checkout` is a source tree whose `mvit serve` is measured (default: this one), so a
change can be measured against the code before it, interleaved in the same run:

    git worktree add /tmp/before BASE_COMMIT
    python -m benchmarks.bench_event_loop models/mobilevitv2-0.5-imagenet1k-256-random \\
        --checkout /tmp/before --checkout . --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from app.cpus import cpu_model
from app.tools.load import closed_loop
from benchmarks._common import command_line, start_listening

PROBE_PERIOD_S = 0.01


def big_png(megabytes: float) -> bytes:
    """A noisy RGB PNG of about `megabytes` MB: noise does not compress, so the file is the pixels."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def probe(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            sent = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            latencies.append(time.perf_counter() - sent)
            time.sleep(PROBE_PERIOD_S)


def single_calls(body: bytes, encoded: str) -> str:
    """How long one call of each parsing step holds the GIL on this body (best of 5): what the event loop
    would wait for, were it run there or on another thread in one go."""
    import pybase64

    from app.api.body import load_json

    steps = {
        "json.loads": lambda: json.loads(body),
        "base64.b64decode(validate=True)": lambda: base64.b64decode(encoded, validate=True),
        "pybase64.b64decode(validate=True)": lambda: pybase64.b64decode(encoded, validate=True),
        "load_json (long strings lifted)": lambda: load_json(body, "The body"),
    }
    timings = []
    for name, step in steps.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        timings.append(f"{name} {best * 1000:.1f} ms")
    return "; ".join(timings)


def measure(
    url: str, body: bytes, content_type: str, concurrency: int, duration_s: float
) -> tuple[list[float], str, int]:
    """(probe latencies, the clients' answers by status, the clients' requests answered 200)."""
    stop, latencies = threading.Event(), []
    prober = threading.Thread(target=probe, args=(url, stop, latencies))
    prober.start()
    address = urlsplit(url)
    try:
        load = asyncio.run(
            closed_loop(
                address.hostname or "",
                address.port or 80,
                "/classify",
                [body],
                concurrency,
                duration_s,
                10**9,
                content_type=content_type,
            )
        )
    finally:
        stop.set()
        prober.join()
    return latencies, ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items())), load.ok


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a classification model folder")
    parser.add_argument("--checkout", action="append", help="a source tree to serve from (repeatable)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--body-mb", type=float, default=15.0, help="body size, MB")
    parser.add_argument("--form", choices=["json", "multipart"], default="json", help="the body's form")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each checkout, interleaved")
    args = parser.parse_args()
    print(f"$ {command_line()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs")
    image = big_png(args.body_mb * 3 / 4 if args.form == "json" else args.body_mb)
    if args.form == "json":
        encoded = base64.b64encode(image).decode()
        body, content_type = (
            json.dumps({"inputs": encoded}).encode(),
            "application/json",
        )
    else:
        boundary = "mvit-bench-boundary"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.png"\r\n\r\n'
        body = head.encode() + image + f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    print(
        f"body: {len(body) / 1e6:.1f} MB of JSON ({len(image) / 1e6:.1f} MB PNG), {args.concurrency} clients"
    )
    if args.form == "json":
        print(f"one call each: {single_calls(body, encoded)}")
    checkouts = [Path(path).resolve() for path in (args.checkout or ["."])]
    model = str(Path(args.model).resolve())
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--model", model]
    rows: dict[Path, list[tuple[float, float, float, str]]] = {path: [] for path in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:
            server, url = start_listening(command, "/ready", cwd=checkout)  # `-m` imports app from there
            try:
                latencies, statuses, answered = measure(
                    url, body, content_type, args.concurrency, args.seconds
                )
            finally:
                server.terminate()
                server.wait(timeout=60)
            p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
            rows[checkout].append((p50, p99, max(latencies) * 1000, f"{answered / args.seconds:.1f} req/s"))
            print(
                f"{checkout}: /health p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies) * 1000:.0f} ms "
                f"({len(latencies)} probes); clients: {statuses}"
            )
    for checkout, runs in rows.items():
        p99s = [run[1] for run in runs]
        print(
            f"{checkout}: /health p99 median {statistics.median(p99s):.1f} ms "
            f"(runs {', '.join(f'{p:.1f}' for p in p99s)}); p50 median "
            f"{statistics.median(run[0] for run in runs):.1f} ms; clients {', '.join(run[3] for run in runs)}"
        )


if __name__ == "__main__":
    main()
