"""Cold start: seconds from launching `mvit serve` to /ready answering 200, per backend (interleaved).

Each run is a new process: interpreter start, imports, model load (ONNX: session creation from the
optimization cache after the first run; torch: building the network and loading weights), warm-up.

    python -m benchmarks.cold_start models/mobilevitv2-1.0-imagenet1k-256-random --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks._common import command_line, start_server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model folders, all served by one process")
    parser.add_argument("--backends", nargs="+", default=["onnx", "torch"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"$ {command_line()}")
    model_args = [arg for model in args.models for arg in ("--model", model)]
    seconds: dict[str, list[float]] = {backend: [] for backend in args.backends}
    for _ in range(args.runs):
        for backend in args.backends:
            started = time.monotonic()
            server, _url = start_server(*model_args, "--backend", backend)
            seconds[backend].append(time.monotonic() - started)
            server.terminate()
            server.wait(timeout=30)
    for backend, samples in seconds.items():
        runs = " ".join(f"{s:.2f}" for s in samples)
        print(
            f"{backend:<6} process start -> /ready: median {statistics.median(samples):.2f} s  (runs: {runs})"
        )


if __name__ == "__main__":
    main()
