"""A server as a subprocess on a loopback port, and waiting until it answers: the one copy that
`mvit tune --workers`, the tests, the benchmarks and CI's smoke check (scripts/smoke_serve.py) share.
Standard library only, like the smoke check, which runs it beside installs that have nothing else."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def loopback_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def mvit_serve(
    *args: str, port: int, launcher: Sequence[str] = (sys.executable, "-m", "app.cli")
) -> list[str]:
    """`mvit serve ARGS` on the loopback `port`, run by `launcher`: an mvit executable, or a Python and
    what makes it run app.cli."""
    return [*launcher, "serve", "--host", LOOPBACK, "--port", str(port), *args]


def request(url: str, data: bytes | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """GET `url`, or POST `data` to it: the status and the body, error statuses included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class NotReady(Exception):
    """The server exited (`returncode`) or did not answer in time (`returncode` None)."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__("not ready in time" if returncode is None else f"exited with {returncode}")
        self.returncode = returncode


def wait_ready(
    process: subprocess.Popen[Any], url: str, timeout: float, path: str = "/ready", interval: float = 0.05
) -> float:
    """Until GET `url` + `path` answers 200; returns the seconds that took. NotReady when `process` exits
    first or `timeout` seconds pass."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise NotReady(process.returncode)
        if time.monotonic() - started > timeout:
            raise NotReady(None)
        try:
            if request(f"{url}{path}", timeout=2)[0] == 200:
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):  # not listening yet, or cut off while starting
            pass
        time.sleep(interval)


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, as an orchestrator stops a server; its exit status once it has exited."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)
