"""benchmarks/soak.py against a live `mvit serve` with all three tasks, for a few seconds: the script runs,
mixes valid and hostile requests on every route, and the server answers each as documented."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, copy_model, start_server, wait_until_ready


def test_soak_script_smoke(exported: dict[str, Path], tmp_path: Path) -> None:
    folders = [copy_model(folder, tmp_path) for folder in exported.values()]  # the server writes its cache
    process, url = start_server(
        *(arg for folder in folders for arg in ("--model", str(folder))),
        "--backend",
        "onnx",
        "--log-level",
        "warning",  # nobody reads the server's output pipe until the end: keep it from filling
    )
    try:
        wait_until_ready(process, url, timeout=120)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.soak",
                "--url",
                url,
                "--minutes",
                "0.15",
                "--concurrency",
                "4",
                "--window-s",
                "3",
                "--hostile-share",
                "0.5",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    out = result.stdout
    assert "PASS  0 unexpected statuses" in out, out + result.stderr
    for route_status in ("valid    200", "hostile  400", "hostile  413", "hostile  200"):
        assert route_status in out, out
    assert "RSS MB: start" in out  # the server's pid was found from its port
    assert result.returncode == 0 or "FAIL  RSS drift" in out  # a few seconds are too short to judge drift
