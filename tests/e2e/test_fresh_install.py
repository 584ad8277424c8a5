"""The README's two commands' setup, as written, in a clean virtualenv: the service's install ends in a
`mvit serve` that, offline, stops in one line; the tests' install makes a venv that collects the suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import venv
from pathlib import Path

from tests.support import ROOT


def readme_commands() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The two commands") : text.index("## Calling it")]
    serve, test = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)[:2]
    return serve, test


def test_the_readme_commands_work_in_a_clean_virtualenv(tmp_path: Path) -> None:
    serve, test = readme_commands()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # no system site-packages: only what the commands install
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(env_dir),
        "HF_HUB_OFFLINE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }

    def shell(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    installs, run = serve.rsplit("&&", 1)
    assert shell(installs, 900).returncode == 0
    started = time.monotonic()
    served = shell(run.strip() + " --model-repository " + str(tmp_path / "models"), 60)
    assert served.returncode == 1 and time.monotonic() - started < 10, served.stderr
    assert "mvit serve: " in served.stderr and "Traceback" not in served.stderr
    assert "`mvit demo-models models/ && mvit serve`" in served.stderr

    setup, pytest_command = (part.strip() for part in test.split("&&"))
    done = shell(setup, 900)
    assert done.returncode == 0, done.stderr[-2000:]
    python = env_dir / "bin" / "python"
    assert Path(sys.executable).resolve() != python.resolve()
    collected = shell(f"{pytest_command} --collect-only -q -p no:cacheprovider tests/unit", 300)
    assert collected.returncode == 0 and re.search(r"\d+ tests collected", collected.stdout), (
        collected.stdout[-2000:]
    )
