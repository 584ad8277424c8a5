"""Shared by the benchmarks: bench photos, a synthetic photo, a `mvit serve` subprocess on a loopback port."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from app.tools.serving import LOOPBACK, NotReady, free_port, loopback_url, wait_ready


def bench_photos(width: int = 640, height: int = 480) -> list[Image.Image]:
    """The bench image set: the 9 colour photographs that ship inside scikit-image (`pip install .[bench]`),
    center-cropped to width:height and resized to width x height."""
    from PIL import ImageOps
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), left, right]
    arrays += [data.hubble_deep_field(), data.retina(), data.immunohistochemistry()]
    return [ImageOps.fit(Image.fromarray(a).convert("RGB"), (width, height), Image.LANCZOS) for a in arrays]


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def phone_jpeg(photo: Image.Image, seed: int = 0) -> bytes:
    """A big photo encoded like a phone camera's JPEG: sensor grain (sigma 4) and quality 92.

    The bench photos are upscaled from about 0.3 MP, so plain JPEGs of them at 12 MP are unusually
    small (about 1 MB) and fast to decode; with grain they are 2-3 MB, like a real 12 MP phone photo."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(photo, dtype=np.float32) + rng.normal(0, 4, (photo.height, photo.width, 3)).astype(
        np.float32
    )
    return jpeg(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), quality=92)


# The bench image sets: name -> (width, height, encoded like a phone photo: `phone_jpeg`).
BENCH_SETS = {"640x480": (640, 480, False), "12MP": (4032, 3024, False), "12MP-phone": (4032, 3024, True)}


def bench_set(name: str) -> list[bytes]:
    """One bench set as JPEG files: quality 90, or phone-like."""
    width, height, phone_like = BENCH_SETS[name]
    photos = bench_photos(width, height)
    return [phone_jpeg(photo, seed=i) if phone_like else jpeg(photo) for i, photo in enumerate(photos)]


def photo_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """Smooth colour waves plus sensor-like noise, scaled with the image so big photos look alike."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(width, height) / 28
    pixels = np.stack(
        [
            128 + 100 * np.sin(xx / period),
            128 + 100 * np.cos(yy / (0.75 * period)),
            128 + 90 * np.sin((xx + yy) / (1.35 * period)),
        ],
        -1,
    )
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def start_listening(
    command: list[str],
    ready_path: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `command` + `--port PORT` (a free loopback port) in `cwd` with `env` as its whole environment
    (default: ours); return once GET `ready_path` answers 200."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        env=os.environ.copy() if env is None else env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = loopback_url(port)
    try:
        wait_ready(process, url, timeout, ready_path)
    except NotReady:
        process.kill()
        raise SystemExit(f"{' '.join(command)} did not become ready") from None
    return process, url


def start_server(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`mvit serve ARGS` on 127.0.0.1 and a free port, run in `cwd` (whose `app` it imports); returns
    once /ready answers 200."""
    command = [sys.executable, "-m", "app.cli", "serve", "--host", LOOPBACK, *args]
    return start_listening(command, "/ready", {**os.environ, **(env or {})}, timeout, cwd)


def command_line() -> str:
    """The command that ran this script, as a reader would type it: `python -m benchmarks.NAME ARGS`."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = f"-m {spec.name}" if spec is not None else shlex.quote(sys.argv[0])
    return f"python {program} {' '.join(map(shlex.quote, sys.argv[1:]))}".rstrip()


def pillow_png(mask: np.ndarray, level: int = 1) -> bytes:
    """A mask as Pillow writes a PNG, at a zlib level: what the service's own mask encoder is compared with."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()
