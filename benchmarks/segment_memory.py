"""Peak memory and time that one 12 MP photo adds to a running /segment server.

Starts `mvit serve` with MODEL on a loopback port, warms it with a small image, then for each round:
records the server's RSS, resets its peak-RSS counter (/proc/PID/clear_refs, Linux), posts a
4032x3024 JPEG to /segment, and reads the new peak (VmHWM). Also reports the server's own phase
timings for those requests (from /metrics) and what the naive dense upsample would have allocated.

    python -m benchmarks.segment_memory models/mobilevitv2-1.0-voc-deeplabv3-512-random --rounds 3
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.tasks.segmentation import encode_png
from benchmarks._common import command_line, photo_jpeg, pillow_png, start_server


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))  # type: ignore[union-attr]


def phase_sums(metrics: str) -> dict[str, tuple[float, float]]:
    sums = {}
    for phase in ("decode", "preprocess", "queue", "inference", "postprocess"):
        total = re.search(rf'mvit_phase_duration_seconds_sum{{[^}}]*phase="{phase}"}} (\S+)', metrics)
        count = re.search(rf'mvit_phase_duration_seconds_count{{[^}}]*phase="{phase}"}} (\S+)', metrics)
        sums[phase] = (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a segmentation model folder")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server, url = start_server("--model", args.model)
    big = photo_jpeg(4032, 3024)
    try:
        with httpx.Client(timeout=120) as client:
            client.post(f"{url}/segment", content=photo_jpeg(640, 480)).raise_for_status()
            before = phase_sums(client.get(f"{url}/metrics").text)
            added, latency, entries, first_mask = [], [], 0, ""
            for _ in range(args.rounds):
                idle = status_kib(server.pid, "VmRSS")
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                started = time.perf_counter()
                response = client.post(f"{url}/segment", content=big)
                latency.append(time.perf_counter() - started)
                response.raise_for_status()
                entries = len(response.json())
                first_mask = response.json()[0]["mask"]
                added.append((status_kib(server.pid, "VmHWM") - idle) / 1024)
            after = phase_sums(client.get(f"{url}/metrics").text)
            model_info = client.get(f"{url}/models").json()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)

    num_labels = model_info["num_labels"]
    print(f"model {model_info['id']}: {num_labels} classes, input {model_info['input_size']}")
    print(
        f"12 MP JPEG (4032x3024, {len(big) / 1e6:.1f} MB), {args.rounds} rounds, {entries} masks per response"
    )
    print(
        f"peak RSS added over idle: median {np.median(added):.0f} MB (each round: {', '.join(f'{a:.0f}' for a in added)})"
    )
    print(f"request latency: median {1000 * np.median(latency):.0f} ms")
    for phase, (total, count) in after.items():
        spent = (total - before[phase][0]) / max(1.0, count - before[phase][1])
        print(f"  {phase:<12} {1000 * spent:7.1f} ms / request")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(first_mask))))
    encoders: dict[str, Callable[[], bytes]] = {
        f"Pillow, zlib level {level}": lambda level=level: pillow_png(mask, level) for level in (0, 1, 6)
    }
    encoders["the service (no row filter, zlib RLE)"] = lambda: base64.b64decode(encode_png(mask))
    for name, encode in encoders.items():
        timings, size = [], 0
        for _ in range(3):
            started = time.perf_counter()
            size = len(encode())
            timings.append(time.perf_counter() - started)
        print(
            f"PNG of one {mask.shape[1]}x{mask.shape[0]} mask, {name}: {1000 * min(timings):.0f} ms, {size / 1e3:.0f} KB"
        )
    naive = num_labels * 4032 * 3024 * 4 / 2**20
    print(f"a dense float32 upsample of the logits alone would allocate {naive:.0f} MB")
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
