"""What the tests share: test images, in-process and live servers, waiting, metrics, reference fixtures."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from huggingface_hub.errors import EntryNotFoundError
from PIL import Image

from app.api import create_app
from app.backends.parity import parity_problems
from app.config import ModelOptions, ServerSettings
from app.intake.preprocess import preprocess
from app.metrics import Metrics
from app.repository import ModelDir, read_model_dir
from app.runtime.models import ModelManager, ServedModel, load_backend, load_model
from app.tools import serving as spawned
from app.tools.serving import free_port

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
CVNETS_FIXTURES = ROOT.parent / "shared" / "fixtures" / "cvnets"


def cvnets_fixture(name: str) -> Path:
    """A folder of ../shared/fixtures/cvnets. Missing: a skip with the reason on a user's machine, a failure
    where MVIT_REQUIRE_FIXTURES=1 (CI sets it: there a missing folder is a broken setup)."""
    folder = CVNETS_FIXTURES / name
    if not folder.is_dir():
        message = f"cvnets reference fixtures not found at {folder}"
        if os.environ.get("MVIT_REQUIRE_FIXTURES") == "1":
            pytest.fail(f"{message} (MVIT_REQUIRE_FIXTURES=1)")
        pytest.skip(message)
    return folder


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with noise: varied enough that models and resizers disagree on mistakes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(xx / (7 + 13 * rng.random()) + rng.random() * 6),
            128 + 100 * np.cos(yy / (5 + 11 * rng.random()) + rng.random() * 6),
            128 + 90 * np.sin((xx + yy) / (9 + 17 * rng.random())),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def photo_with_shapes(width: int, height: int, seed: int = 0) -> Image.Image:
    """A procedural photo (colour fields, shapes, stripes, noise: app/tools/calibrate.py) at width x height:
    what demo detectors find a handful of confident boxes in, where `photo_like` gives them few."""
    from app.tools.calibrate import procedural_photos

    return next(procedural_photos(1, seed)).resize((width, height), Image.Resampling.BILINEAR)


TASKS = ("image-classification", "image-segmentation", "object-detection")


def copy_model(folder: Path, into: Path, *, onnx_only: bool = False) -> Path:
    """A copy of a model folder, without its ONNX Runtime cache (and without its PyTorch weights)."""
    target = into / folder.name
    ignore = shutil.ignore_patterns("onnx-cache", *(["model.safetensors"] if onnx_only else []))
    shutil.copytree(folder, target, ignore=ignore)
    return target


def batch_for(folder: Path, count: int = 3) -> np.ndarray:
    """Preprocessed photos (not noise): the inputs the service really feeds the network."""
    spec = load_served(folder).preprocessing
    return np.stack([preprocess(photo_like(500, 380, seed=s), spec) for s in range(count)])


def assert_matches(actual: object, expected: object, name: str = "logits") -> None:
    """`actual` is the same function's output as the reference `expected` (arrays or tensors): within
    `app.backends.parity.tolerance` (1e-4 + 1e-4 x the largest |output|), and, for logits, with the same
    winning class wherever the reference's top two are not within twice that."""
    problems = parity_problems({name: np.asarray(expected)}, {name: np.asarray(actual)})
    assert not problems, problems


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Until every model is loaded (asked of the app itself: /ready may need a token)."""
    manager = client.app.state.manager  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and manager.loading:
        time.sleep(0.05)
    if not manager.ready:
        raise AssertionError(f"service not ready: loading={manager.loading}, error={manager.error}")


def make_settings(model_dir: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "models": [str(model_dir)],
        "inference_threads": 2,
        "decode_threads": 2,
        "model_repository": model_dir.parent,
    }
    values.update(overrides)
    return ServerSettings(**values)


def load_served(model_dir: Path, **options: object) -> ServedModel:
    """One model folder loaded as the server loads it (tuning record included), with two inference threads."""
    return load_model(read_model_dir(model_dir), ModelOptions(**{"inference_threads": 2, **options}))


@contextmanager
def serving(model_dir: Path, **overrides: object) -> Iterator[TestClient]:
    """An in-process app serving one model folder, ready (loaded and warmed up)."""
    app = create_app(make_settings(model_dir, **overrides))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


MODEL_ID = "mobilevitv2-0.5-imagenet1k-256-random"


class GatedBackend:
    """A real backend whose calls, once armed, wait for the test to open the gate; counts real work."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.artifact, self.instances = inner, inner.name, inner.artifact, 1
        self.armed = False
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.images_computed = 0

    @property
    def device_type(self) -> str:
        return str(self.inner.device_type)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
            self.images_computed += len(batch)
        return dict(self.inner.infer(batch))

    infer_on_instance = infer


@contextmanager
def gated_app(model_dir: Path, **overrides: object) -> Iterator[tuple[FastAPI, GatedBackend]]:
    settings = make_settings(model_dir, max_batch_size=1, instances=1, **overrides)
    backends: list[GatedBackend] = []

    def loader(folder: ModelDir, s: ModelOptions) -> GatedBackend:
        backends.append(GatedBackend(load_backend(folder, s)))
        return backends[-1]

    app = create_app(settings, ModelManager(settings, Metrics(), backend_loader=loader))
    try:
        yield app, backends
    finally:
        for backend in backends:
            backend.gate.set()


def pending(app: FastAPI) -> int:
    return int(app.state.manager.models[MODEL_ID].batcher.pending)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def metric(client: TestClient, needle: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(needle):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rejected(reason: str) -> str:
    return f'mvit_requests_rejected_total{{model="{MODEL_ID}",reason="{reason}"}}'


@contextmanager
def live(app: FastAPI) -> Iterator[int]:
    """The app under a real uvicorn on a loopback port, in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn to start")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def start_server(
    *args: str, launcher: tuple[str, ...] = ("-m", "app.cli")
) -> tuple[subprocess.Popen[str], str]:
    """`python LAUNCHER serve ARGS` on a free loopback port (the launcher runs `app.cli` one way or another)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MVIT_INFERENCE_THREADS": "2"}
    process = subprocess.Popen(
        spawned.mvit_serve(*args, port=port, launcher=[sys.executable, *launcher]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return process, spawned.loopback_url(port)


def wait_until_ready(process: subprocess.Popen[str], url: str, timeout: float = 60) -> None:
    try:
        spawned.wait_ready(process, url, timeout, interval=0.1)
    except spawned.NotReady as exc:
        if exc.returncode is None:
            raise AssertionError("server never became ready") from None
        raise AssertionError(
            f"server exited early:\n{process.stdout.read() if process.stdout else ''}"
        ) from None


@contextmanager
def running_server(*args: str, ready_timeout: float = 60, stop_timeout: float = 30) -> Iterator[str]:
    """`mvit serve ARGS` on a loopback port, ready; afterwards SIGTERM, which must end it with status 0."""
    process, url = start_server(*args)
    try:
        wait_until_ready(process, url, timeout=ready_timeout)
        yield url
    finally:
        assert spawned.stop(process, stop_timeout) == 0


def mvit(*args: str) -> subprocess.CompletedProcess[str]:
    """`mvit ARGS` in this process, as its console script runs it (`app.cli.main`): the exit status and
    what it printed. For commands that print a result or fail in one line before serving; one that
    configures logging or starts a server (`mvit serve` past its flag checks) runs as `mvit_process`."""
    from app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors, and SystemExit("message") as Python prints it
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return subprocess.CompletedProcess(["mvit", *args], status, out.getvalue(), err.getvalue())


def mvit_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`mvit ARGS` as a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300
    )


def run_benchmark(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks.NAME ARGS` from the repository root; fails the test if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download, serving files of a local folder."""

    def __init__(self, source: Path, files: set[str]) -> None:
        self.source, self.files, self.calls = source, files, []

    def __call__(self, repo_id: str, filename: str, revision: str | None, local_dir: Path) -> str:
        self.calls.append((repo_id, filename, revision))
        if filename not in self.files:
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        local_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.source / filename, local_dir / filename)
        return str(local_dir / filename)


def hub_like(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the demo model as the Hub has it: pytorch_model.bin only, no manifest."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "upstream"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(model_dir / name, folder / name)
    torch.save(load_file(str(model_dir / "model.safetensors")), folder / "pytorch_model.bin")
    return folder


def smooth_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Distinct, image-like inputs in [0, 1]: coarse random colour fields plus fine noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=gen)
    fields = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )
    return (0.9 * fields + 0.1 * torch.rand(n, 3, height, width, generator=gen)).clamp(0, 1)


def exported_metric_names() -> set[str]:
    """Every sample name the service's metrics export (histograms' and counters' suffixes included)."""
    names = set()
    for metric in Metrics().registry.collect():
        names.add(metric.name)
        if metric.type == "histogram":
            names |= {f"{metric.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
        if metric.type == "counter":
            names.add(f"{metric.name}_total")
    return names
