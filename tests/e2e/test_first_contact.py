"""What a new user meets first: `mvit serve` without network, without a model, without a backend's packages.
Each fails before binding its port, in a few seconds, in one line that says what to run instead."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli import main
from tests.support import ROOT, free_port, wait_until_ready

OFFLINE_COMMANDS = "mvit demo-models models/ && mvit serve"
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
    assert f"`{OFFLINE_COMMANDS}`" in output
    assert not (tmp_path / "models" / "hub").exists()  # no half download left behind


def readme_console_commands() -> list[tuple[str, str]]:
    """(command, the output README.md shows for it) from the console blocks of its "Calling it" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Calling it", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        command, *output = block.strip().split("\n")
        assert command.startswith("$ "), block
        commands.append((command.removeprefix("$ "), "\n".join(output)))
    return commands


def same_text_and_numbers(printed: str, shown: str) -> bool:
    """The same text, and the same numbers up to a relative 1e-4 (the last digits differ between CPUs)."""
    number = r"-?\d+\.\d+(?:e-?\d+)?"
    if re.sub(number, "#", printed) != re.sub(number, "#", shown):
        return False
    pairs = zip(re.findall(number, printed), re.findall(number, shown), strict=True)
    return all(math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-9) for a, b in pairs)


def test_the_offline_alternative_serves_the_three_tasks_and_the_readme_prints_what_it_shows(
    tmp_path: Path,
) -> None:
    """`mvit demo-models models/ && mvit serve`, as the hint and the README write it, in an empty folder;
    then the README's commands, with its photo, print what the README shows."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```bash\n{OFFLINE_COMMANDS}\n```" in readme  # the hint's commands, as the README gives them
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    demo = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo-models", "models/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert demo.returncode == 0, demo.stderr
    assert "models/models.yaml: now serves" in demo.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url, timeout=120)
        served = httpx.get(f"{url}/models").json()
        assert sorted(model["route"] for model in served) == ["/classify", "/detect", "/segment"]
        shutil.copy(ROOT / "docs" / "photo.jpg", tmp_path / "photo.jpg")
        for route in ("/detect", "/segment"):
            answer = httpx.post(f"{url}{route}", content=(tmp_path / "photo.jpg").read_bytes(), timeout=60)
            assert answer.status_code == 200 and answer.json(), answer.text
        # The caller is online as far as huggingface_hub knows (offline mode refuses even loopback), and
        # its `python` is this one.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        caller_env = {**env, "HF_HUB_OFFLINE": "0", "PATH": path}
        commands = readme_console_commands()
        assert len(commands) == 2  # curl and Python
        for command, shown in commands:
            ran = subprocess.run(
                ["bash", "-c", command.replace("http://127.0.0.1:8000", url)],
                cwd=tmp_path,
                env=caller_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert ran.returncode == 0, ran.stderr
            assert same_text_and_numbers(ran.stdout.strip(), shown), (command, ran.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)


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


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (["serve", "--prot", "8000"], "usage: mvit serve", "(--prot: did you mean --port?)"),
        (
            ["serve", "--max-batch-sise=4"],
            "usage: mvit serve",
            "(--max-batch-sise: did you mean --max-batch-size?)",
        ),
        (["demo-models", "models/", "--widht", "1.0"], "usage: mvit demo-models", "did you mean --width?"),
    ],
)
def test_a_mistyped_flag_shows_its_commands_usage_and_the_nearest_flag(
    args: list[str], usage: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith(usage) and hint in error, error


def test_a_bad_setting_in_the_environment_is_one_line(tmp_path: Path) -> None:
    status, output, _ = serve(tmp_path, env={"MVIT_LOG_LEVEL": "verbose"})
    assert status == 1 and output.strip().startswith("mvit: invalid configuration: log_level")
    assert len(output.strip().splitlines()) == 1
