"""The image lane's engine, checks and report: podman building the Dockerfile's targets and running them as
a user would, the checks every image must pass, and the figures printed at the end of the run.

Docker's CLI takes the same words for everything here but `--format docker` and `healthcheck run`; the
lane has only been run with podman (docs/deployment.md#building-and-testing-the-images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port

IMAGE = "localhost/mobilevitv2-serve"
UID = 10001
VARIANTS = [("edge", "amd64"), ("edge-openvino", "amd64"), ("full", "amd64"), ("edge", "arm64")]
# /ready after start, generous for a loaded 2-core machine: three models load, and arm64 is emulated.
READY_BOUND_S = {"amd64": 60, "arm64": 360}
BASE_BUDGET_MB = 200  # the most the edge image may add to its Python base
REPORT: list[str] = []  # printed at the end of the run (conftest.py)
# Made by scripts/setup-images.sh where no registry is reachable; elsewhere the Dockerfile's default.
LOCAL_BASE = "localhost/debian-python:bookworm-{arch}"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The core qemu emulates for arm64 images: a Raspberry Pi 5's (Graviton 2's Neoverse N1 is its kin). qemu's
# default ("max") has SVE, whose emulation makes ONNX Runtime about 18x slower (51 s against 2.8 s for one
# width-0.5 classification): tests/images would time out without saying anything about ARM boards.
EMULATED_ARM_CPU = "cortex-a76"
# Even so, one width-0.5 segmentation takes tens of seconds emulated: the service's own deadlines (30 s to
# answer, 30 s to drain) are stretched for arm64 runs, and nothing else.
EMULATED_DEADLINES = {"MVIT_REQUEST_TIMEOUT_S": "600", "MVIT_DRAIN_TIMEOUT_S": "300"}
STOP_GRACE_S = {"amd64": 40, "arm64": 330}  # the drain and 30 s more, as compose's 40 s over 30 s


def requested() -> bool:
    return "1" in (os.environ.get("MVIT_IMAGES"), os.environ.get("MVIT_REQUIRE_IMAGES"))


def missing(reason: str) -> None:
    if os.environ.get("MVIT_REQUIRE_IMAGES") == "1":
        pytest.fail(f"{reason} (MVIT_REQUIRE_IMAGES=1)")
    pytest.skip(reason)


class EngineError(AssertionError):
    """An engine command failed: the command and what it printed."""


@dataclass(frozen=True)
class Build:
    target: str
    arch: str
    tag: str
    seconds: float
    size_mb: float
    layers: list[tuple[float, str]]  # (MB, instruction), newest first


@dataclass
class Container:
    engine: Engine
    name: str
    url: str
    log: list[str] = field(default_factory=list)

    def logs(self) -> str:
        result = self.engine.run("logs", self.name, check=False)
        return result.stdout + result.stderr  # the service logs to stderr

    def state(self) -> dict:
        return json.loads(self.engine.run("inspect", "--format", "{{json .State}}", self.name).stdout)

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.engine.run("exec", self.name, *command, check=check)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from now until /ready answers 200; a clear failure if the container exits first."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.state()["Running"]:
                raise EngineError(
                    f"{self.name} exited before /ready ({self.state()['ExitCode']}):\n{self.logs()}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise EngineError(f"{self.name} not ready within {timeout} s:\n{self.logs()[-3000:]}")

    def stop(self, grace_s: int = 40) -> int:
        """`podman stop` (SIGTERM, then SIGKILL after the grace); the exit code."""
        self.engine.run("stop", "-t", str(grace_s), self.name, timeout=grace_s + 30)
        return int(self.state()["ExitCode"])

    def remove(self) -> None:
        self.engine.run("rm", "-f", self.name, check=False)


@dataclass
class Engine:
    binary: str

    @classmethod
    def find(cls) -> Engine | None:
        path = shutil.which("podman")
        return cls(path) if path else None

    def run(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise EngineError(
                f"{self.binary} {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def base_image(self, arch: str) -> str | None:
        """The local base made by scripts/setup-images.sh, or None for the Dockerfile's default."""
        local = LOCAL_BASE.format(arch=arch)
        return local if self.has_image(local) else None

    def machine_args(self, arch: str, base_arg: str) -> list[str]:
        """What any build needs on this machine: the local base image as `base_arg` (where
        scripts/setup-images.sh made one) and the host's CA bundle, mounted for the build only (these
        machines' HTTPS goes through a re-signing proxy; it is never baked in)."""
        args = ["build", "--format", "docker", "--network", "host", "--arch", arch]
        base = self.base_image(arch)
        if base:
            args += ["--pull=never", "--build-arg", f"{base_arg}={base}"]
        if CA_BUNDLE.is_file():
            args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        return args

    def build_args(self, arch: str) -> list[str]:
        return [
            *self.machine_args(arch, "PYTHON_IMAGE"),
            "--file",
            str(ROOT / "Dockerfile"),
            *torch_wheel_args(),
        ]

    def build(self, target: str, arch: str) -> Build:
        tag = f"{IMAGE}:{target}-{arch}"
        start = time.monotonic()
        self.run(*self.build_args(arch), "--target", target, "--tag", tag, str(ROOT), timeout=3600)
        seconds = time.monotonic() - start
        return Build(target, arch, tag, seconds, self.size_mb(tag), self.layers(tag))

    def size_mb(self, image: str) -> float:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6

    def layers(self, image: str) -> list[tuple[float, str]]:
        rows = json.loads(self.run("history", "--no-trunc", "--format", "json", image).stdout)
        return [(row.get("size", 0) / 1e6, row.get("CreatedBy", "")) for row in rows]

    def serve(self, image: str, models: Path, *, name: str) -> Container:
        """The image as a user runs it: the model folder mounted read-only, a read-only root filesystem, a
        tmpfs /tmp, every capability dropped; on loopback through the host's network."""
        port = free_port()
        self.run("rm", "-f", name, check=False)
        settings = {"MVIT_HOST": "127.0.0.1", "MVIT_PORT": str(port)}
        if self.os_arch(image) == "arm64":
            settings |= {"QEMU_CPU": EMULATED_ARM_CPU, **EMULATED_DEADLINES}  # QEMU_CPU: read by the emulator
        self.run(
            "run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--volume", f"{models}:/models:ro",
            *[f"--env={key}={value}" for key, value in settings.items()],
            image,
        )  # fmt: skip
        return Container(self, name, f"http://127.0.0.1:{port}")

    def run_tool(
        self, image: str, *command: str, volume: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A one-off command in the image (entry point `mvit`), as its user."""
        args = ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp"]
        if volume:
            args += ["--volume", volume]
        return self.run(*args, image, *command, timeout=900)

    def python(self, image: str, code: str) -> str:
        return self.run(
            "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code
        ).stdout

    def healthcheck(self, container: Container) -> subprocess.CompletedProcess[str]:
        return self.run("healthcheck", "run", container.name, check=False)

    def os_arch(self, image: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Architecture}}", image).stdout.strip()


def torch_wheel_args() -> list[str]:
    """Where pip is told of a folder holding a CPU torch wheel (PIP_FIND_LINKS, as on CI's machines, which
    cannot reach PyTorch's index), that folder mounted into the build and torch taken from it and PyPI."""
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        for wheel in sorted(Path(folder).glob("torch-*+cpu-*.whl")) if Path(folder).is_dir() else []:
            version = re.match(r"torch-([^-]+)-", wheel.name)
            if version:
                return [
                    "-v", f"{folder}:{folder}:ro",
                    "--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple",
                    "--build-arg", f"TORCH_FIND_LINKS={folder}",
                    "--build-arg", f"TORCH_REQUIREMENT=torch=={version.group(1).split('+')[0]}",
                ]  # fmt: skip
    return []


def pid1_ids(container: Container) -> tuple[int, int]:
    """The service process's real uid and gid (PID 1: the entry point, exec form)."""
    status = container.exec("cat", "/proc/1/status").stdout
    ids = {
        line.split(":")[0]: int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("Uid:", "Gid:"))
    }
    return ids["Uid"], ids["Gid"]


def serve_checked(engine: Engine, image: str, models: Path, name: str, arch: str) -> tuple[Container, float]:
    """Starts the image as a user would and checks what every image must do before it answers anything:
    ready within the bound, the service process not root but the image's user, its HEALTHCHECK passing."""
    container = engine.serve(image, models, name=name)
    try:
        ready_s = container.wait_ready(timeout=READY_BOUND_S[arch])
        uid, gid = pid1_ids(container)
        assert (uid, gid) == (UID, UID), f"{image}: the service runs as uid {uid} gid {gid}, not {UID}:{UID}"
        health = engine.healthcheck(container)
        assert health.returncode == 0, f"{image}: its HEALTHCHECK fails: {health.stdout}{health.stderr}"
    except BaseException:
        container.remove()
        raise
    return container, ready_s
