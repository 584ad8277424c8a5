"""A closed-loop HTTP/1.1 load generator on asyncio streams: cheap enough to share 2 cores with a server
(`mvit tune --workers` and the benchmarks).

Each of `concurrency` connections sends one POST, reads the whole answer, and sends the next, until
`max_requests` are done or `duration_s` has passed. Keep-alive; a connection the server closes is
reopened. Loopback only: it refuses any other host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers only
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "429", ..., "connection error"
    wall_seconds: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.statuses.get("200", 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_seconds if self.wall_seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def http_request(
    host: str, port: int, path: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> bytes:
    """One keep-alive HTTP/1.1 POST, as bytes."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep_alive) after reading the whole response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") != "close"


def check_loopback(host: str) -> None:
    """ValueError unless `host` is this machine: load generation targets loopback only."""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to load {host}: load generation targets loopback only")


async def closed_loop(
    url_host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    content_type: str = "image/jpeg",
    headers: list[dict[str, str]] | None = None,
    request_timeout_s: float = 60.0,
) -> LoadResult:
    """Run the load; bodies (each with its `headers`, if given) are taken in turn. Bounded by both
    `duration_s` and `max_requests`; a request unanswered after `request_timeout_s` counts as "timeout"
    and its connection is dropped."""
    check_loopback(url_host)
    requests = [
        http_request(url_host, port, path, body, content_type, headers[i] if headers else None)
        for i, body in enumerate(bodies)
    ]
    turn = itertools.count()
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + duration_s

    async def connection() -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            n = next(turn)
            if n >= max_requests:
                break
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(request_timeout_s):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(url_host, port)
                    writer.write(requests[n % len(requests)])
                    status, keep_alive = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                failure = "timeout" if isinstance(exc, TimeoutError) else "connection error"
                result.statuses[failure] = result.statuses.get(failure, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            key = str(status)
            result.statuses[key] = result.statuses.get(key, 0) + 1
            if status == 200:
                result.latencies.append(time.perf_counter() - sent)
            if not keep_alive:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.wall_seconds = time.perf_counter() - started
    return result
