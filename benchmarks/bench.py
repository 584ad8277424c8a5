"""End-to-end throughput and latency: this service vs the raw backend vs a naive server and a LitServe peer.

The model folder's task picks the route (/classify, /segment, /detect); the naive server and the peer
are classifiers, so they only run for classification models.

In one run, on loopback ports, with the same model folder:
  * mvit:  `mvit serve` (dynamic batching, decode pool, the backend chosen with --backend);
  * naive: benchmarks/naive_server.py (FastAPI + transformers.pipeline, PyTorch, one image per call);
  * litserve: benchmarks/litserve_peer.py (LitServe batching over ONNX Runtime, HF JSON in and out): the
    peer a user would otherwise build (its bodies are the same photos as base64 JSON, encoded once);
  * oip:   with --oip, the first mvit server again, over the Open Inference Protocol
    (/v2/models/{id}/infer, one image per request as tritonclient sends it: binary tensor data);
  * raw:   the same backend in this process on preprocessed tensors, batch 1/2/4/8, no HTTP, no decode.
A closed-loop load generator (app/tools/load.py) posts the bench photos (scikit-image's 9 colour
photos, as 640x480 and 4032x3024 JPEGs at quality 90, and at 4032x3024 with sensor-like grain at quality
92, which makes them 2-3 MB like a phone's photos) at each concurrency.

This machine's neighbours come and go in spells of several seconds, so every comparison is paired: in
each round, each (concurrency, image set) group runs the raw references (best configuration, best single
call, batch 1) and then each server, in an order that rotates by round, and a ratio is taken within the
round. Targets report the median and range of those per-round figures; req/s in the table is the median
over rounds, p50/p99 are over all requests of a cell. Load is bounded in requests and in time.

    pip install -e ".[test,bench]"
    mvit demo-models models/ --width 1.0 --task classification
    mvit export models/mobilevitv2-1.0-imagenet1k-256-random
    python -m benchmarks.bench models/mobilevitv2-1.0-imagenet1k-256-random
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from app.api.oip_body import serialize_bytes
from app.tools.load import LoadResult, closed_loop
from benchmarks._common import BENCH_SETS, bench_set, command_line, start_listening, start_server

if TYPE_CHECKING:
    from app.runtime.models import ServedModel


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
    """benchmarks/naive_server.py in the environment a user would give it: none of our tuning."""
    script = Path(__file__).with_name("naive_server.py")
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MVIT_"))}
    return start_listening([sys.executable, str(script), model], "/health", plain, timeout=180)


def start_peer(model: str) -> tuple[subprocess.Popen[bytes], str]:
    """benchmarks/litserve_peer.py with LitServe's and ONNX Runtime's own defaults, as a user would run it."""
    script = Path(__file__).with_name("litserve_peer.py")
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MVIT_"))}
    return start_listening([sys.executable, str(script), model], "/health", plain, timeout=180)


def as_json(bodies: list[bytes]) -> list[bytes]:
    return [json.dumps({"inputs": base64.b64encode(body).decode()}).encode() for body in bodies]


def as_oip(bodies: list[bytes]) -> tuple[list[bytes], list[dict[str, str]]]:
    """One-image infer requests as tritonclient sends them (binary in and out), with their headers."""
    requests, headers = [], []
    for body in bodies:
        element = serialize_bytes(np.array([body], dtype=object))
        tensor = {
            "name": "image",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"binary_data_size": len(element)},
        }
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        requests.append(header + element)
        headers.append({"Inference-Header-Content-Length": str(len(header))})
    return requests, headers


@dataclass
class Client:
    """How the load generator calls one server: where, with which bodies (per image set), how labelled."""

    url: str
    path: str
    bodies: dict[str, list[bytes]]
    content_type: str = "image/jpeg"
    headers: dict[str, list[dict[str, str]]] | None = None  # per image set, one per body

    def headers_for(self, image_set: str, index: int) -> dict[str, str]:
        return self.headers[image_set][index] if self.headers else {}


PEERS = {"naive", "litserve"}
JSON_SERVERS = {"litserve"}
RawResults = dict[str, tuple[float, float]]  # configuration -> (img/s, p50 seconds per call)


def raw_configurations(model: ServedModel, sizes: list[int]) -> list[tuple[str, int, int]]:
    """(label, batch size, concurrent calls). Each batch size runs as one call on all inference threads
    ("batch N") and, when the backend has several instances, as that many concurrent calls on one
    instance's threads each ("batch N xI"), which is how the server runs batches under load."""
    configurations = [(f"batch {n}", n, 1) for n in sizes]
    if (instances := model.backend.instances) > 1:
        configurations += [(f"batch {n} x{instances}", n, instances) for n in sizes]
    return configurations


def raw_run(
    model: ServedModel,
    batches: dict[int, np.ndarray],
    configurations: list[tuple[str, int, int]],
    seconds: float,
) -> RawResults:
    """Call the backend in each configuration for `seconds` in all, in turn."""
    from app.runtime.measure_tuning import timed_calls

    return {
        label: timed_calls(model.backend, batches[size], parallel, seconds / len(configurations))
        for label, size, parallel in configurations
    }


def spread(values: list[float], digits: int = 2) -> str:
    """Median and range of per-round figures."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="model folder of any task (exported for --backend onnx / openvino)")
    parser.add_argument("--backend", choices=("onnx", "openvino", "torch"), default="onnx")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", nargs="+", choices=tuple(BENCH_SETS), default=list(BENCH_SETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per cell and round")
    parser.add_argument("--max-requests", type=int, default=2000, help="per cell and round")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--no-peer", action="store_true", help="skip the LitServe peer")
    parser.add_argument(
        "--oip", action="store_true", help="also the first mvit server over the Open Inference Protocol"
    )
    parser.add_argument(
        "--mvit",
        nargs="+",
        default=["mvit"],
        metavar="LABEL[@DIR][:NAME=VALUE,...]",
        help="one mvit server per item, with these environment settings (A/B runs in one go), served "
        "from the source tree DIR if given (a worktree of another commit), e.g. mvit "
        "mvit-b1:MVIT_MAX_BATCH_SIZE=1 before@/tmp/before; targets are checked for the first",
    )
    args = parser.parse_args()
    # A time limit's SIGTERM (benchmarks/scale_up.sh) stops the servers in `finally`, waited for.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The same thread budget everywhere: torch's OpenMP threads must not spin beside the decode pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from app.api.routes import TASK_ROUTES
    from app.config import ServerSettings
    from app.cpus import available_cpus, cpu_model
    from app.intake.decode import decode
    from app.intake.preprocess import preprocess
    from app.runtime.models import load_source

    print(f"$ {command_line()}")
    print(
        f"{time.strftime('%Y-%m-%d')}; {cpu_model()}, {os.cpu_count()} cores, {available_cpus()} usable; {platform.machine()}, "
        f"Python {platform.python_version()}; backend {args.backend}"
    )
    images = {name: bench_set(name) for name in args.images}
    for name, bodies in images.items():
        print(f"images {name}: {len(bodies)} JPEGs, mean {statistics.mean(map(len, bodies)) / 1e6:.2f} MB")

    settings = ServerSettings(models=[args.model], backend=args.backend, onnx_auto_export=False)
    model = load_source(args.model, settings)
    tensors = [
        preprocess(d.image, model.preprocessing, d.size)
        for d in (decode(b, 10**8) for b in images[args.images[0]])
    ]
    batches = {
        n: np.ascontiguousarray(np.stack([tensors[i % len(tensors)] for i in range(n)])) for n in (1, 2, 4, 8)
    }
    every_configuration = raw_configurations(model, list(batches))
    raw_run(model, batches, every_configuration, 2.0)  # warm-up at every shape
    # Which raw configurations are the references: the best one, the best single call, and batch 1.
    calibration = raw_run(model, batches, every_configuration, 4 * args.seconds)
    print(f"\nraw {args.backend} backend on preprocessed tensors, calibration (img/s):")
    print("  " + ", ".join(f"{label} {ips:.1f}" for label, (ips, _) in calibration.items()))
    best = max(calibration, key=lambda label: calibration[label][0])
    best_single = max((c for c in calibration if " x" not in c), key=lambda label: calibration[label][0])
    references = [c for c in every_configuration if c[0] in {best, best_single, "batch 1"}]

    servers = {}
    mvit_labels = [item.partition(":")[0].partition("@")[0] for item in args.mvit]
    for item in args.mvit:
        name, _, settings_text = item.partition(":")
        label, _, checkout = name.partition("@")
        # The backend goes by environment, so that an item's MVIT_BACKEND can override it (a flag would win).
        env = {"MVIT_BACKEND": args.backend}
        env |= dict(pair.split("=", 1) for pair in settings_text.split(",") if pair)
        # `-m app.cli` imports the package from the server's working directory: DIR's code is what runs.
        servers[label] = start_server(
            "--model", str(Path(args.model).resolve()), env=env, cwd=Path(checkout) if checkout else None
        )
        served = httpx.get(f"{servers[label][1]}/models", timeout=10).json()[0]
        print(
            f"server {label}: {served['backend']} {served['precision']} ({served['artifact']}) on {served['device']}, "
            f"max_batch_size {served['max_batch_size']}, instances {served['instances']}, "
            f"{'tuned' if served['tuning']['tuned'] else 'not tuned'}"
        )
    route = TASK_ROUTES[model.task.name]
    classifier = route == "/classify"
    if not classifier:
        print(f"{route}: the naive server and the LitServe peer are classifiers; comparing with raw only")
    if not args.no_naive and classifier:
        servers["naive"] = start_naive(args.model)
    if not args.no_peer and classifier:
        servers["litserve"] = start_peer(args.model)
    json_images = {name: as_json(bodies) for name, bodies in images.items()}
    clients = {
        name: Client(url, route, json_images, "application/json")
        if name in JSON_SERVERS
        else Client(url, route, images)
        for name, (_, url) in servers.items()
    }
    if args.oip:
        oip = {name: as_oip(bodies) for name, bodies in images.items()}
        clients["oip"] = Client(
            servers[next(iter(servers))][1],
            f"/v2/models/{model.id}/infer",
            {name: requests for name, (requests, _) in oip.items()},
            "application/octet-stream",
            {name: headers for name, (_, headers) in oip.items()},
        )
    groups = [(image_set, concurrency) for concurrency in args.concurrency for image_set in images]
    cells: dict[tuple[str, int, str], Cell] = {}
    raw: dict[tuple[str, int], list[RawResults]] = {}
    try:
        for client in clients.values():
            for image_set, bodies in client.bodies.items():
                for i, body in enumerate(bodies[:3]):
                    headers = {"content-type": client.content_type, **client.headers_for(image_set, i)}
                    httpx.post(
                        f"{client.url}{client.path}", content=body, headers=headers, timeout=120
                    ).raise_for_status()
        names = list(clients)
        for round_number in range(args.rounds):
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            for image_set, concurrency in groups:
                # The raw reference runs right before the servers it is compared with, so a noisy spell
                # on the machine hits both; the servers take turns at going first.
                time.sleep(1)  # let the servers' last work finish
                raw.setdefault((image_set, concurrency), []).append(
                    raw_run(model, batches, references, args.seconds)
                )
                for name in order:
                    client = clients[name]
                    result = asyncio.run(
                        closed_loop(
                            "127.0.0.1",
                            int(client.url.rsplit(":", 1)[1]),
                            client.path,
                            client.bodies[image_set],
                            concurrency,
                            args.seconds,
                            args.max_requests,
                            client.content_type,
                            client.headers[image_set] if client.headers else None,
                        )
                    )
                    cells.setdefault((image_set, concurrency, name), Cell()).rounds.append(result)
                    # As it goes, so that a run cut short still shows what it measured.
                    print(
                        f"round {round_number + 1}: {image_set} c={concurrency} {name}: "
                        f"{result.throughput:.1f} req/s, p50 {1000 * result.percentile(50):.1f} ms, "
                        f"raw best {raw[(image_set, concurrency)][-1][best][0]:.1f} img/s",
                        file=sys.stderr,
                        flush=True,
                    )
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)

    every_raw = [r for rounds in raw.values() for r in rounds]
    print(f"\nraw references, median over {len(every_raw)} runs next to the servers:")
    for label, _, _ in references:
        ips = statistics.median(r[label][0] for r in every_raw)
        p50 = 1000 * statistics.median(r[label][1] for r in every_raw)
        print(f"  {label}: {ips:.1f} img/s, p50 {p50:.1f} ms per call")

    def vs_raw(key: tuple[str, int, str], label: str = best) -> list[float]:
        """Per round: the cell's req/s over the raw reference measured just before it."""
        return [r.throughput / ref[label][0] for r, ref in zip(cells[key].rounds, raw[key[:2]], strict=True)]

    def vs_cell(key: tuple[str, int, str], other: tuple[str, int, str]) -> list[float]:
        return [
            a.throughput / b.throughput for a, b in zip(cells[key].rounds, cells[other].rounds, strict=True)
        ]

    first_mvit = mvit_labels[0]
    # Each further mvit server (an A/B configuration: another backend, precision, batch size) against the
    # first, paired within each round.
    print(
        "\n| images | concurrency | server | req/s | p50 ms | p99 ms | errors | vs raw | vs naive | vs litserve "
        f"| vs {first_mvit} |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for image_set, concurrency in groups:
        for name in names:
            key = (image_set, concurrency, name)
            cell = cells[key]
            naive = (image_set, concurrency, "naive")
            vs_naive = (
                f"{statistics.median(vs_cell(key, naive)):.2f}x"
                if naive in cells and name not in PEERS
                else ""
            )
            peer = (image_set, concurrency, "litserve")
            vs_peer = (
                f"{statistics.median(vs_cell(key, peer)):.2f}x" if peer in cells and name not in PEERS else ""
            )
            vs_first = (
                spread(vs_cell(key, (image_set, concurrency, first_mvit)))
                if name in mvit_labels and name != first_mvit
                else ""
            )
            print(
                f"| {image_set} | {concurrency} | {name} | {cell.throughput:.1f} | {cell.percentile_ms(50):.1f} | "
                f"{cell.percentile_ms(99):.1f} | {cell.errors} | {statistics.median(vs_raw(key)):.2f} | {vs_naive} | "
                f"{vs_peer} | {vs_first} |"
            )

    print(f"\ntargets (median of {args.rounds} rounds, range in brackets; each round pairs adjacent runs)")
    first_set = args.images[0]
    mvit = first_mvit

    def check(label: str, values: list[float], target: float, above: bool, unit: str = "") -> None:
        value = statistics.median(values)
        ok = value >= target if above else value <= target
        sign = ">=" if above else "<="
        print(f"  {'PASS' if ok else 'MISS'} {label}: {spread(values)}{unit} ({sign} {target:.2f}{unit})")

    if (key := (first_set, 8, mvit)) in cells:
        check(f"{first_set} c=8 throughput / raw best ({best})", vs_raw(key), 0.90, True)
        check(
            f"{first_set} c=8 throughput / raw best single call ({best_single})",
            vs_raw(key, best_single),
            0.90,
            True,
        )
        if (naive := (first_set, 8, "naive")) in cells:
            check(f"{first_set} c=8 throughput / naive", vs_cell(key, naive), 3.0, True)
        if (peer := (first_set, 8, "litserve")) in cells:
            check(f"{first_set} c=8 throughput / LitServe peer", vs_cell(key, peer), 1.8, True)
    if (key := (first_set, 1, mvit)) in cells:
        added = [
            1000 * (r.percentile(50) - ref["batch 1"][1])
            for r, ref in zip(cells[key].rounds, raw[key[:2]], strict=True)
        ]
        check(f"{first_set} c=1 p50 minus raw batch-1 p50", added, 3.0, False, " ms")
        if len(args.images) > 1 and (big := (args.images[1], 1, mvit)) in cells:
            ratios = [
                b.percentile(50) / s.percentile(50)
                for b, s in zip(cells[big].rounds, cells[key].rounds, strict=True)
            ]
            check(f"{args.images[1]} c=1 p50 / {first_set} c=1 p50", ratios, 1.3, False)


if __name__ == "__main__":
    main()
