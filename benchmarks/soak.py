"""Soak a running service: N minutes at concurrency C on loopback, valid and hostile requests on every task.

    mvit serve --backend onnx &                        # the service under test, on 127.0.0.1:8000
    python -m benchmarks.soak --minutes 10 --concurrency 16

Every request knows what it may get back: a valid photo 200; a hostile upload (benchmarks/hostile_images.py)
its documented 400/413 (or 200 for the awkward-but-valid ones). Anything else is "unexpected". Each window
prints requests, unexpected statuses, p50/p99 of the valid requests and the server's RSS (from /proc; the
server is found by its listening port, or given with --pid). Verdict: 0 unexpected statuses and RSS drift
under 10% between the end of the warm-up and the end. Exit status 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from app.tools.load import check_loopback, http_request, read_response
from benchmarks._common import command_line, photo_jpeg
from benchmarks.hostile_images import hostile_corpus

ROUTES = {
    "image-classification": "/classify",
    "image-segmentation": "/segment",
    "object-detection": "/detect",
}
RSS_DRIFT_TARGET = 0.10
# Valid uploads: camera-like sizes and orientations, one 12 MP phone-sized photo.
PHOTOS = [
    photo_jpeg(w, h) for w, h in ((640, 480), (480, 640), (1024, 768), (320, 240), (1920, 1080), (4032, 3024))
]


@dataclass(frozen=True)
class Planned:
    route: str
    request: bytes  # the whole HTTP request
    expected: frozenset[int]
    kind: str  # "valid" or the hostile corpus entry's name


@dataclass
class Window:
    started: float
    count: int = 0
    latencies: list[float] = field(default_factory=list)  # valid requests answered 200
    by_route: dict[str, list[float]] = field(default_factory=dict)  # the same, per route
    unexpected: int = 0
    rss_mb: float | None = None


def plan_requests(
    host: str, port: int, routes: list[str], hostile_share: float, token: str | None, seed: int
) -> list[Planned]:
    """A shuffled cycle of requests: every photo on every route in three body forms, and the corpus."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    plans: list[Planned] = []
    for photo in PHOTOS:
        for route in routes:
            forms = [
                (photo, "image/jpeg"),
                (json.dumps({"inputs": base64.b64encode(photo).decode()}).encode(), "application/json"),
            ]
            for body, content_type in forms:
                request = http_request(host, port, route, body, content_type, headers)
                plans.append(Planned(route, request, frozenset({200}), "valid"))
    hostile = [
        Planned(
            route,
            http_request(host, port, route, item.data, "application/octet-stream", headers),
            item.expected,
            item.name,
        )
        for item in hostile_corpus()
        for route in routes
    ]
    if (
        hostile_share > 0
    ):  # every hostile request once, and as many copies of the valid ones as the share asks
        plans *= max(1, round(len(hostile) * (1 - hostile_share) / (len(plans) * hostile_share)))
        plans += hostile
    random.Random(seed).shuffle(plans)
    return plans


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on a loopback TCP port, from /proc (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def soak(
    host: str,
    port: int,
    plans: list[Planned],
    concurrency: int,
    duration_s: float,
    window_s: float,
    pid: int | None,
) -> tuple[list[Window], dict[tuple[str, str], int], list[str]]:
    started = time.monotonic()
    deadline = started + duration_s
    windows = [Window(0.0)]
    statuses: dict[tuple[str, str], int] = {}  # (valid|hostile, status) -> count
    examples: list[str] = []
    turn = iter(range(10**12))

    def record(plan: Planned, outcome: str, seconds: float) -> None:
        window = windows[-1]
        window.count += 1
        family = "valid" if plan.kind == "valid" else "hostile"
        statuses[(family, outcome)] = statuses.get((family, outcome), 0) + 1
        if outcome.isdigit() and int(outcome) in plan.expected:
            if plan.kind == "valid":
                window.latencies.append(seconds)
                window.by_route.setdefault(plan.route, []).append(seconds)
            return
        window.unexpected += 1
        if len(examples) < 20:
            examples.append(f"{plan.kind} on {plan.route}: {outcome} (expected {sorted(plan.expected)})")

    async def connection() -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            plan = plans[next(turn) % len(plans)]
            sent = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(plan.request)
                status, keep_alive = await asyncio.wait_for(read_response(reader), 120)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, TimeoutError) as exc:
                record(plan, f"connection error ({type(exc).__name__})", 0.0)
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
                continue
            record(plan, str(status), time.perf_counter() - sent)
            if not keep_alive:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def windows_and_rss() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(window_s, max(0.0, deadline - time.monotonic())))
            windows[-1].rss_mb = rss_mb(pid)
            print_window(len(windows), windows[-1], window_s)
            if time.monotonic() < deadline:
                windows.append(Window(time.monotonic() - started))

    await asyncio.gather(windows_and_rss(), *(connection() for _ in range(concurrency)))
    return windows, statuses, examples


def print_window(number: int, window: Window, window_s: float) -> None:
    if number == 1:
        print(
            f"{'t (s)':>7} {'requests':>9} {'req/s':>7} {'valid p50':>10} {'valid p99':>10} {'unexpected':>11} {'RSS MB':>8}"
        )
    rss = f"{window.rss_mb:8.0f}" if window.rss_mb is not None else f"{'?':>8}"
    print(
        f"{window.started:7.0f} {window.count:9d} {window.count / window_s:7.1f} "
        f"{percentile(window.latencies, 50) * 1000:8.1f}ms {percentile(window.latencies, 99) * 1000:8.1f}ms "
        f"{window.unexpected:11d} {rss}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service (loopback only)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window-s", type=float, default=60.0, help="report every this many seconds")
    parser.add_argument("--warmup-windows", type=int, default=1, help="windows before the RSS baseline")
    parser.add_argument("--hostile-share", type=float, default=0.25, help="fraction of hostile requests")
    parser.add_argument("--pid", type=int, help="server pid for RSS (default: found by the listening port)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    token = os.environ.get("MVIT_SOAK_TOKEN")  # not a flag: `ps` would show it

    print(f"$ {command_line()}")
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    try:
        check_loopback(host)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    served = httpx.get(f"{args.url}/models", headers=headers, timeout=10).raise_for_status().json()
    routes = sorted({ROUTES[model["task"]] for model in served})
    pid = args.pid or listener_pid(port)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.url} serves {', '.join(m['id'] for m in served)}; "
        f"server pid {pid or 'unknown (no RSS)'}; concurrency {args.concurrency}, {args.minutes:g} min, "
        f"{args.hostile_share:.0%} hostile; run id {uuid.uuid4().hex[:8]}"
    )
    plans = plan_requests(host, port, routes, args.hostile_share, token, args.seed)
    hostile = sum(plan.kind != "valid" for plan in plans)
    print(f"request cycle: {len(plans)} requests, {hostile / len(plans):.0%} hostile")
    idle_rss = rss_mb(pid)
    windows, statuses, examples = asyncio.run(
        soak(host, port, plans, args.concurrency, args.minutes * 60, args.window_s, pid)
    )

    print("\nstatuses:")
    for (family, outcome), count in sorted(statuses.items()):
        print(f"  {family:8s} {outcome:30s} {count:8d}")
    unexpected = sum(w.unexpected for w in windows)
    for example in examples:
        print(f"  unexpected: {example}")
    for route in routes:
        seconds = [s for w in windows for s in w.by_route.get(route, [])]
        print(
            f"  valid {route:10s} p50 {percentile(seconds, 50) * 1000:7.1f} ms  "
            f"p99 {percentile(seconds, 99) * 1000:7.1f} ms  ({len(seconds)} answers)"
        )
    rss = [w.rss_mb for w in windows if w.rss_mb is not None]
    verdicts = [("0 unexpected statuses", unexpected == 0, f"{unexpected}")]
    if len(rss) > args.warmup_windows + 1:
        baseline, middle, end = rss[args.warmup_windows], rss[len(rss) // 2], rss[-1]
        drift = (end - baseline) / baseline
        print(
            f"\nRSS MB: start (idle) {idle_rss:.0f}, after warm-up {baseline:.0f}, middle {middle:.0f}, "
            f"end {end:.0f} (drift after warm-up {drift:+.1%})"
        )
        verdicts.append(
            (
                f"RSS drift < {RSS_DRIFT_TARGET:.0%} after warm-up",
                abs(drift) < RSS_DRIFT_TARGET,
                f"{drift:+.1%}",
            )
        )
    else:
        print("\nRSS: not enough windows (or no pid) for a drift figure")
    latencies = [s for w in windows for s in w.latencies]
    total = sum(w.count for w in windows)
    print(
        f"total {total} requests, {total / (args.minutes * 60):.1f} req/s; valid p50 "
        f"{percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms; "
        f"median window p99 {statistics.median(percentile(w.latencies, 99) for w in windows) * 1000:.1f} ms"
    )
    for what, ok, value in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value}")
    return 0 if all(ok for _, ok, _ in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
