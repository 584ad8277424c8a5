"""The image lane: the Dockerfile's targets built and run as a user would (docs/deployment.md#building-and-testing-the-images).

It builds four images (23 to 27 min on 2 cores, arm64 emulated), so it runs only where asked:
MVIT_IMAGES=1 runs it, and a machine without podman skips it with the reason. MVIT_REQUIRE_IMAGES=1 (CI)
runs it and makes a missing engine, base image or emulator a failure. `bash scripts/setup-images.sh`
sets a Debian machine up for it. Build and start times, sizes and layers are printed at the end of the run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.tools.demo_models import write_demo_model
from tests.images.lane import REPORT, Build, Engine, missing, requested
from tests.support import TASKS, mvit_process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.images)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("image lane: measured on this machine")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    if not requested():
        pytest.skip("the image lane builds and runs four images (about 25 min): MVIT_IMAGES=1 runs it")
    found = Engine.find()
    if found is None:
        missing("no podman here: `bash scripts/setup-images.sh` installs and configures it")
    assert found is not None
    yield found
    # The build cache of this run's intermediate stages (untagged): several GB with vfs storage. The
    # tagged images stay; the next run builds the rest again.
    found.run("image", "prune", "--force", check=False)


def emulates(arch: str) -> bool:
    return arch == "amd64" or Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()


@pytest.fixture(scope="session")
def build(engine: Engine) -> Callable[[str, str], Build]:
    """Builds a target for an architecture once per session, and reports its time, size and layers."""
    built: dict[tuple[str, str], Build] = {}

    def get(target: str, arch: str) -> Build:
        if (target, arch) not in built:
            if not emulates(arch):
                missing(f"no {arch} emulation registered: `bash scripts/setup-images.sh` sets it up")
            result = engine.build(target, arch)
            built[target, arch] = result
            base = engine.base_image(arch) or "python:3.11-slim"
            REPORT.append(
                f"built {target:<14} {arch}: {result.seconds:6.0f} s, {result.size_mb:5.0f} MB "
                f"({result.size_mb - engine.size_mb(base):.0f} MB over {base})"
            )
            for size, instruction in result.layers:
                if size >= 1:
                    REPORT.append(f"    {size:6.0f} MB  {instruction[:100]}")
        return built[target, arch]

    return get


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Demo models of the three tasks (width 0.5) with their ONNX exports, readable by the image's user."""
    folder = tmp_path_factory.mktemp("image-models")
    names = [write_demo_model(folder, task, width=0.5, seed=seed).name for seed, task in enumerate(TASKS)]
    (folder / "models.yaml").write_text("models:\n" + "".join(f"  - name: {name}\n" for name in names))
    result = mvit_process("export", "--model-repository", str(folder), "--all")
    assert result.returncode == 0, result.stderr[-2000:]
    subprocess.run(["chmod", "-R", "a+rX", str(folder.parent), str(folder)], check=True)
    yield folder
