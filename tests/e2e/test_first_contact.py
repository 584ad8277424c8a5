"""What a new user meets first: `mvit serve` without network, without a model, without a backend's packages.
Each fails before binding its port, in a few seconds, in one line that says what to run instead."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, free_port

BLOCKING_LAUNCHER = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
from app.cli import main
sys.exit(main())
"""


def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, blocked: str = ""
) -> tuple[int, str, float]:
    """`mvit serve ARGS` in an empty folder: (exit status, stderr and stdout, seconds)."""
    launcher = ["-c", BLOCKING_LAUNCHER, blocked] if blocked else ["-m", "app.cli"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *launcher, "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    return result.returncode, result.stderr + result.stdout, time.monotonic() - started


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1"},
        # A Hub endpoint that refuses connections, on loopback: what a firewalled machine sees.
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
    ],
    ids=["HF_HUB_OFFLINE", "unreachable-hub"],
)
def test_offline_serve_of_the_default_model_fails_at_once_in_a_few_lines(
    tmp_path: Path, env: dict[str, str]
) -> None:
    status, output, seconds = serve(tmp_path, env=env)
    lines = output.strip().splitlines()
    assert status == 1 and seconds < 5, (status, seconds, output)
    assert len(lines) <= 3 and "Traceback" not in output, output
    assert "Uvicorn running" not in output  # nothing was bound
    assert lines[-1].startswith("mvit serve: ")
    assert (
        "`mvit demo-models models/ && mvit serve --model models/mobilevitv2-0.5-imagenet1k-256-random`"
        in output
    )
    assert not (tmp_path / "models" / "hub").exists()  # no half download left behind


def test_the_offline_alternative_it_names_works(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo-models", "models/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0 and (tmp_path / "models/mobilevitv2-0.5-imagenet1k-256-random").is_dir()


def test_an_unknown_model_is_one_line(tmp_path: Path) -> None:
    status, output, _ = serve(tmp_path, "--model", "no-such-model")
    assert status == 1 and output.strip() == (
        "mvit serve: 'no-such-model' is neither a model folder nor a Hugging Face Hub id (org/name)"
    )


@pytest.mark.parametrize(
    ("backend", "blocked", "extra"),
    [
        ("torch", "safetensors", "torch"),
        ("torch", "torch,safetensors", "torch"),
        ("onnx", "onnxruntime", "onnx"),
    ],
)
def test_a_missing_backend_package_names_the_extra_to_install(
    model_dir: Path, tmp_path: Path, backend: str, blocked: str, extra: str
) -> None:
    status, output, _ = serve(tmp_path, "--model", str(model_dir), "--backend", backend, blocked=blocked)
    assert status == 1 and "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1, output
    assert f"pip install '.[{extra}]'" in output and blocked.split(",")[0] in output


def test_an_onnx_only_install_asked_for_a_hub_model_says_what_to_do(tmp_path: Path) -> None:
    status, output, _ = serve(tmp_path, "--backend", "onnx", blocked="huggingface_hub,torch,safetensors")
    assert status == 1 and "Traceback" not in output, output
    assert (
        output.strip()
        .splitlines()[-1]
        .startswith("mvit serve: cannot fetch 'apple/mobilevitv2-1.0-imagenet1k-256'")
    )
    assert "huggingface_hub is not installed" in output and "pip install '.[export]'" in output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("serve", "--log-level", "verbose"), "usage: mvit serve"),  # argparse: the usage, then the error
        (
            ("demo-models", "models/", "--image-size", "100"),
            "mvit demo-models: image size must be a multiple of 32",
        ),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and result.stderr.strip().startswith(expected), result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_in_the_environment_is_one_line(tmp_path: Path) -> None:
    status, output, _ = serve(tmp_path, env={"MVIT_LOG_LEVEL": "verbose"})
    assert status == 1 and output.strip().startswith("mvit: invalid configuration: log_level")
    assert len(output.strip().splitlines()) == 1
