"""End-to-end /classify throughput and latency: this service vs the raw backend vs a naive server.

In one run, on loopback ports, with the same model folder:
  * mvit:  `mvit serve` (dynamic batching, decode pool, the backend chosen with --backend);
  * naive: scripts/naive_server.py (FastAPI + transformers.pipeline, PyTorch, one image per call);
  * raw:   the same backend in this process on preprocessed tensors, batch 1/2/4/8, no HTTP, no decode.
A closed-loop load generator (scripts/_loadgen.py) posts the bench photos (scikit-image's 9 colour
photos, as 640x480 and 4032x3024 JPEGs at quality 90, and at 4032x3024 with sensor-like grain at quality
92, which makes them 2-3 MB like a phone's photos) at each concurrency. Servers and raw runs are
interleaved round by round so machine noise hits them alike; req/s is the median over rounds, p50/p99
are over all requests of a cell. Load is bounded in requests and in time.

    pip install -e ".[test,bench]"
    mvit demo-models models/ --width 1.0 --task classification
    mvit export models/mobilevitv2-1.0-imagenet1k-256-random
    python scripts/bench.py models/mobilevitv2-1.0-imagenet1k-256-random
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from _common import BENCH_SETS, bench_set, start_listening, start_server
from _loadgen import LoadResult, closed_loop

if TYPE_CHECKING:
    from app.registry import ServedModel


@dataclass
class Cell:
    rounds: list[LoadResult] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return statistics.median(r.throughput for r in self.rounds)

    def percentile_ms(self, q: float) -> float:
        merged = LoadResult(latencies=[x for r in self.rounds for x in r.latencies])
        return 1000 * merged.percentile(q)

    @property
    def errors(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rounds:
            for status, n in r.statuses.items():
                if status != "200":
                    counts[status] = counts.get(status, 0) + n
        return ",".join(f"{n}x{s}" for s, n in sorted(counts.items())) or "0"


def start_naive(model: str) -> tuple[subprocess.Popen[bytes], str]:
    """scripts/naive_server.py in the environment a user would give it: none of our tuning."""
    script = Path(__file__).with_name("naive_server.py")
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MVIT_"))}
    return start_listening([sys.executable, str(script), model], "/health", plain, timeout=180)


def raw_round(
    model: ServedModel, batches: dict[int, np.ndarray], seconds: float
) -> dict[str, tuple[float, float]]:
    """{configuration: (img/s, p50 seconds per call)}, calling the backend for about `seconds` in all.

    Each batch size runs as one call on all inference threads ("batch N") and, when the backend has
    several instances, as that many concurrent calls on one instance's threads each ("batch N x I"),
    which is how the server runs batches under load."""
    configurations = [(f"batch {n}", n, 1) for n in batches]
    instances = model.backend.instances
    if instances > 1:
        configurations += [(f"batch {n} x{instances}", n, instances) for n in batches]
    results = {}
    for label, size, parallel in configurations:
        infer = model.backend.infer if parallel == 1 else model.backend.infer_on_instance
        until = time.perf_counter() + seconds / len(configurations)

        def calls(
            infer: Callable[..., object] = infer, size: int = size, until: float = until
        ) -> list[float]:
            times: list[float] = []
            while time.perf_counter() < until or len(times) < 3:
                started = time.perf_counter()
                infer(batches[size])
                times.append(time.perf_counter() - started)
            return times

        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            per_thread = list(pool.map(lambda _: calls(), range(parallel)))
        wall = time.perf_counter() - started
        images = size * sum(len(times) for times in per_thread)
        results[label] = (images / wall, statistics.median(t for times in per_thread for t in times))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="classification model folder (exported for --backend onnx)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", nargs="+", choices=tuple(BENCH_SETS), default=list(BENCH_SETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="load time per cell and round")
    parser.add_argument("--max-requests", type=int, default=2000, help="per cell and round")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument(
        "--mvit",
        nargs="+",
        default=["mvit"],
        metavar="LABEL[:NAME=VALUE,...]",
        help="one mvit server per item, with these environment settings (A/B runs in one go), "
        "e.g. mvit mvit-b1:MVIT_MAX_BATCH_SIZE=1; targets are checked for the first",
    )
    args = parser.parse_args()
    # The same thread budget everywhere: torch's OpenMP threads must not spin beside the decode pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    from app.config import Settings
    from app.cpus import available_cpus
    from app.imaging import decode
    from app.preprocess import preprocess
    from app.registry import load_model

    print(f"$ python {' '.join(map(shlex.quote, sys.argv))}")
    print(
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores, {available_cpus()} usable; {platform.machine()}, "
        f"Python {platform.python_version()}; backend {args.backend}"
    )
    images = {name: bench_set(name) for name in args.images}
    for name, bodies in images.items():
        print(f"images {name}: {len(bodies)} JPEGs, mean {statistics.mean(map(len, bodies)) / 1e6:.2f} MB")

    settings = Settings(models=[args.model], backend=args.backend, onnx_auto_export=False)
    model = load_model(args.model, settings)
    tensors = [
        preprocess(d.image, model.preprocessing, d.size)
        for d in (decode(b, 10**8) for b in images[args.images[0]])
    ]
    batches = {
        n: np.ascontiguousarray(np.stack([tensors[i % len(tensors)] for i in range(n)])) for n in (1, 2, 4, 8)
    }
    raw_round(model, batches, 2.0)  # warm-up at every shape

    servers = {}
    for item in args.mvit:
        label, _, settings_text = item.partition(":")
        env = dict(pair.split("=", 1) for pair in settings_text.split(",") if pair)
        servers[label] = start_server("--model", args.model, "--backend", args.backend, env=env)
    if not args.no_naive:
        servers["naive"] = start_naive(args.model)
    cells: dict[tuple[str, int, str], Cell] = {}
    raw: dict[str, list[tuple[float, float]]] = {}
    try:
        for _, url in servers.values():
            for bodies in images.values():
                for body in bodies[:3]:
                    httpx.post(f"{url}/classify", content=body, timeout=120).raise_for_status()
        for round_number in range(args.rounds):
            time.sleep(2)  # let the last cell's server go idle (the naive one finishes 12 MP work late)
            for label, result in raw_round(model, batches, args.seconds).items():
                raw.setdefault(label, []).append(result)
            for image_set, bodies in images.items():
                for concurrency in args.concurrency:
                    for name, (_, url) in servers.items():
                        port = int(url.rsplit(":", 1)[1])
                        result = asyncio.run(
                            closed_loop(
                                "127.0.0.1",
                                port,
                                "/classify",
                                bodies,
                                concurrency,
                                args.seconds,
                                args.max_requests,
                            )
                        )
                        cells.setdefault((image_set, concurrency, name), Cell()).rounds.append(result)
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)

    raw_ips = {label: statistics.median(r[0] for r in rounds) for label, rounds in raw.items()}
    best = max(raw_ips, key=raw_ips.__getitem__)
    raw_p50_ms = 1000 * statistics.median(r[1] for r in raw["batch 1"])
    print(f"\nraw {args.backend} backend on preprocessed tensors (img/s):")
    print("  " + ", ".join(f"{label} {ips:.1f}" for label, ips in raw_ips.items()))
    print(f"  best {raw_ips[best]:.1f} img/s ({best}); single image p50 {raw_p50_ms:.1f} ms (batch 1)")
    print(
        "\n| images | concurrency | server | req/s | p50 ms | p99 ms | errors | vs raw | vs naive |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    for (image_set, concurrency, name), cell in cells.items():
        naive = cells.get((image_set, concurrency, "naive"))
        vs_naive = f"{cell.throughput / naive.throughput:.2f}x" if naive and name != "naive" else ""
        print(
            f"| {image_set} | {concurrency} | {name} | {cell.throughput:.1f} | {cell.percentile_ms(50):.1f} | "
            f"{cell.percentile_ms(99):.1f} | {cell.errors} | {cell.throughput / raw_ips[best]:.2f} | {vs_naive} |"
        )

    print("\ntargets")
    first_set = args.images[0]
    mvit = next(iter(servers))

    def check(label: str, value: float, target: float, above: bool, unit: str = "") -> None:
        ok = value >= target if above else value <= target
        print(
            f"  {'PASS' if ok else 'MISS'} {label}: {value:.2f}{unit} ({'>=' if above else '<='} {target:.2f}{unit})"
        )

    if (key := (first_set, 8, mvit)) in cells:
        check(f"{first_set} c=8 throughput / raw best", cells[key].throughput / raw_ips[best], 0.90, True)
        single = max((label for label in raw_ips if " x" not in label), key=raw_ips.__getitem__)
        check(
            f"{first_set} c=8 throughput / raw best single call ({single}, no concurrent instances)",
            cells[key].throughput / raw_ips[single],
            0.90,
            True,
        )
        if (naive_key := (first_set, 8, "naive")) in cells:
            check(
                f"{first_set} c=8 throughput / naive",
                cells[key].throughput / cells[naive_key].throughput,
                3.0,
                True,
            )
    if (key := (first_set, 1, mvit)) in cells:
        check(
            f"{first_set} c=1 p50 vs raw batch-1 p50 + 5 ms",
            cells[key].percentile_ms(50),
            raw_p50_ms + 5,
            False,
            " ms",
        )
        if len(args.images) > 1 and (big := (args.images[1], 1, mvit)) in cells:
            ratio = cells[big].percentile_ms(50) / cells[key].percentile_ms(50)
            check(f"{args.images[1]} c=1 p50 / {first_set} c=1 p50", ratio, 1.5, False)


if __name__ == "__main__":
    main()
