"""Sequential (concurrency 1) latency of /classify against the raw model on the same machine.

Starts `mvit serve` on a loopback port with MODEL, then interleaves rounds of
  * raw:  the backend alone on one preprocessed 1-image batch (in this process),
  * http: one POST /classify of a 640x480 JPEG (decode + preprocess + queue + model + JSON),
so machine noise hits both alike. Prints medians and the exact command.

    python scripts/latency.py models/mobilevitv2-1.0-imagenet1k-256-random --rounds 40
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _common import photo_jpeg, start_server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from app.config import Settings
    from app.imaging import decode_image
    from app.preprocess import preprocess
    from app.registry import load_model

    settings = Settings(models=[args.model], inference_threads=args.threads)
    model = load_model(args.model, settings)
    data = photo_jpeg(640, 480)
    batch = preprocess(decode_image(data, settings.max_image_pixels), model.preprocessing)[None]

    server, url = start_server("--model", args.model, env={"MVIT_INFERENCE_THREADS": str(args.threads)})
    try:
        with httpx.Client(timeout=30) as client:
            for _ in range(3):  # warm both paths
                model.backend.infer(batch)
                client.post(f"{url}/classify", content=data).raise_for_status()
            raw, http = [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                model.backend.infer(batch)
                raw.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.post(f"{url}/classify", content=data).raise_for_status()
                http.append(time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def ms(values: list[float], q: float) -> float:
        return 1000 * float(np.quantile(values, q))

    print(
        f"model {model.id} ({model.backend.name}, {args.threads} threads, {os.cpu_count()} cores), {args.rounds} rounds"
    )
    print(f"{'path':<6} {'p50 ms':>8} {'p90 ms':>8}")
    print(f"{'raw':<6} {ms(raw, 0.5):8.1f} {ms(raw, 0.9):8.1f}")
    print(f"{'http':<6} {ms(http, 0.5):8.1f} {ms(http, 0.9):8.1f}")
    print(f"http - raw at p50: {1000 * (statistics.median(http) - statistics.median(raw)):.1f} ms")
    print("command: python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]]))


if __name__ == "__main__":
    main()
