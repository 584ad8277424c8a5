"""Where a served request's CPU goes: per-thread CPU time of a live `mvit serve`, per answered request.

Starts the service on a loopback port, posts the 640x480 bench photos to /classify at a fixed
concurrency, and reads each thread's CPU time from /proc (Linux) before and after every round. The
service names its threads ("decode_N", "infer-<model>_N"); the event loop is "python", ONNX Runtime's
own pool threads keep the name of the thread that made them. The model-alone figure is the CPU time of
one instance call on a preprocessed photo in this process, for comparison.

    python -m benchmarks.cpu_per_request models/mobilevitv2-1.0-imagenet1k-256-random --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import time
from pathlib import Path

from app.tools.load import closed_loop
from benchmarks._common import bench_set, command_line, start_server


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread name of a process, threads of one pool added up."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = re.sub(r"_\d+$", "", stat[stat.index("(") + 1 : stat.rindex(")")])
        fields = stat[stat.rindex(")") + 2 :].split()
        totals[name] += (int(fields[11]) + int(fields[12])) / ticks
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="classification model folder (exported for --backend onnx)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    from app.config import ServerSettings
    from app.intake.decode import decode
    from app.intake.preprocess import preprocess
    from app.runtime.models import load_source

    print(f"$ {command_line()}")
    bodies = bench_set("640x480")
    model = load_source(
        args.model, ServerSettings(models=[args.model], backend=args.backend, onnx_auto_export=False)
    )
    decoded = decode(bodies[0], 10**8)
    batch = preprocess(decoded.image, model.preprocessing, decoded.size)[None]
    infer = model.backend.infer_on_instance if model.backend.instances > 1 else model.backend.infer
    for _ in range(3):
        infer(batch)
    calls = []
    for _ in range(30):
        started = time.thread_time()
        infer(batch)
        calls.append(time.thread_time() - started)
    model_ms = 1000 * statistics.median(calls)

    process, url = start_server("--model", args.model, "--backend", args.backend, "--log-level", "warning")
    port = int(url.rsplit(":", 1)[1])
    try:
        asyncio.run(
            closed_loop("127.0.0.1", port, "/classify", bodies, args.concurrency, 3, 10**6)
        )  # warm-up
        for _ in range(args.rounds):
            before = thread_cpu_seconds(process.pid)
            result = asyncio.run(
                closed_loop("127.0.0.1", port, "/classify", bodies, args.concurrency, args.seconds, 10**6)
            )
            after = thread_cpu_seconds(process.pid)
            per_request = {
                name: 1000 * (after[name] - before.get(name, 0.0)) / result.ok
                for name in after
                if after[name] - before.get(name, 0.0) > 0
            }
            total = sum(per_request.values())
            threads = ", ".join(
                f"{name} {ms:.2f}" for name, ms in sorted(per_request.items(), key=lambda kv: -kv[1])
            )
            print(
                f"c={args.concurrency}: {result.throughput:.1f} req/s, server CPU {total:.1f} ms per request "
                f"({threads}); model alone {model_ms:.1f} ms = {model_ms / total:.2f} of it"
            )
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
