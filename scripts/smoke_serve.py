"""Start an installed `mvit serve` on loopback, send one photo to every served model, check the answers.

Standard library only, so it runs with any environment's Python, including the ONNX-only install that
has no torch (CI uses it to prove that install serves all three tasks):

    python -m scripts.smoke_serve --mvit /tmp/edge/bin/mvit --expect-no torch -- --backend onnx \\
        --model models/mobilevitv2-0.5-imagenet1k-256-random

Everything after `--` goes to `mvit serve`. Or run a Dockerfile target's exact ENTRYPOINT + CMD with its
ENV, from an installed environment's bin folder (what CI does for the edge image, which it cannot build):

    python -m scripts.smoke_serve --dockerfile Dockerfile --target edge --bin /tmp/edge/bin \
        --env MVIT_MODEL_REPOSITORY=/tmp/models

Prints the cold start (process start to /ready) and one line per request; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from app.tools.serving import (
    LOOPBACK,
    NotReady,
    free_port,
    loopback_url,
    mvit_serve,
    request,
    stop,
    wait_ready,
)

EXPECTED_KEY = {"/classify": "score", "/segment": "mask", "/detect": "box"}


def photo() -> bytes:
    from PIL import Image  # a core dependency of every install

    gradient = bytes((x * 255 // 639) for _ in range(480) for x in range(640))
    image = Image.merge("RGB", [Image.frombytes("L", (640, 480), gradient)] * 3).rotate(30)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mvit", default="mvit", help="the mvit executable to run")
    parser.add_argument("--dockerfile", type=Path, help="run this Dockerfile's ENTRYPOINT + CMD and ENV ...")
    parser.add_argument("--target", default="edge", help="... of this stage")
    parser.add_argument("--bin", type=Path, help="... with its executable from this folder (a venv's bin/)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE over the Dockerfile's ENV")
    parser.add_argument(
        "--expect-no", action="append", default=[], help="a module that must not be importable"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for /ready")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then `mvit serve` arguments")
    args = parser.parse_args()
    serve_args = [a for a in args.serve_args if a != "--"]

    port = free_port()
    loopback = {"MVIT_HOST": LOOPBACK, "MVIT_PORT": str(port)}
    if args.dockerfile:
        from scripts._dockerfile import read_stages

        stage = read_stages(args.dockerfile)[args.target]
        executable, *rest = stage.command
        command = [str(args.bin / executable) if args.bin else executable, *rest]
        env = {**os.environ, **stage.env, **dict(e.split("=", 1) for e in args.env), **loopback}
        print(
            f"{args.dockerfile}:{args.target}: {' '.join(stage.command)} (ENV {' '.join(sorted(stage.env))})"
        )
        python = args.bin / "python" if args.bin else Path(sys.executable)
    else:
        command = mvit_serve(*serve_args, port=port, launcher=[args.mvit])
        env = dict(os.environ)
        python = Path(args.mvit).with_name("python") if os.sep in args.mvit else Path(sys.executable)
    for module in args.expect_no:
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            print(f"FAIL: {module} is importable by {python}", file=sys.stderr)
            return 1
        print(f"ok: {module} is not installed for {python}")

    server = subprocess.Popen(command, env=env)
    try:
        failures = check(server, loopback_url(port), args.timeout)
    finally:
        status = stop(server)
    if status != 0:
        print(f"FAIL: mvit serve exited with {status} after SIGTERM", file=sys.stderr)
        failures += 1
    return 1 if failures else 0


def check(server: subprocess.Popen[bytes], url: str, timeout: float) -> int:
    """Wait for /ready, then one request per served model; returns the number of failures."""
    try:
        seconds = wait_ready(server, url, timeout)
    except NotReady as exc:
        reason = "not ready in time" if exc.returncode is None else f"mvit serve exited with {exc.returncode}"
        print(f"FAIL: {reason}", file=sys.stderr)
        return 1
    print(f"cold start (process start to /ready): {seconds:.2f} s")
    failures = 0
    image = photo()
    for model in json.loads(request(f"{url}/models")[1]):
        route = model["route"]
        status, body = request(f"{url}{route}", image)
        result = json.loads(body) if body else None
        good = (
            status == 200 and isinstance(result, list) and bool(result) and EXPECTED_KEY[route] in result[0]
        )
        failures += not good
        print(
            f"{'ok' if good else 'FAIL'}: {route} {model['id']} ({model['backend']}, {model['artifact']}) -> {status}"
        )
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
