"""The README's JavaScript block, run as written with the real `@huggingface/inference` (tests/js) against a
live `mvit serve` with all three tasks. Skips where Node.js or the package is missing, unless
MVIT_REQUIRE_JS_CLIENT=1 (CI sets it; `scripts/setup-dev.sh` installs both)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, encode, photo_with_shapes, start_server, wait_until_ready

PACKAGE = ROOT / "tests" / "js" / "node_modules" / "@huggingface" / "inference"
# What the README does not print but the client's behaviour hangs on: `parameters` next to raw image bytes
# are dropped (the README says so, and says to use the query string instead).
PROBE = """
const dropped = await client.imageClassification({ endpointUrl: `${url}/classify`, data: image, parameters: { top_k: 2 } });
let dataError = null;
try { await client.imageSegmentation({ endpointUrl: `${url}/segment`, data: image }); } catch (error) { dataError = error.message; }
console.log("RESULT " + JSON.stringify({ labels, boxes, masks, dropped: dropped.length, dataError }));
"""


def readme_js() -> str:
    blocks = re.findall(r"```js\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "README.md should hold one JavaScript block"
    return blocks[0]


@pytest.fixture(scope="module")
def node() -> str:
    executable = shutil.which("node")
    if executable is None or not PACKAGE.is_dir():
        reason = (
            "Node.js is not installed"
            if executable is None
            else f"{PACKAGE} is missing (npm ci --prefix tests/js)"
        )
        if os.environ.get("MVIT_REQUIRE_JS_CLIENT") == "1":
            pytest.fail(f"{reason} (MVIT_REQUIRE_JS_CLIENT=1)")
        pytest.skip(reason)
    return executable


@pytest.fixture(scope="module")
def server(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[str]:
    process, url = start_server(
        *(arg for d in (model_dir, seg_model_dir, det_model_dir) for arg in ("--model", str(d)))
    )
    try:
        wait_until_ready(process, url)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_the_readme_javascript_runs_as_written(node: str, server: str, tmp_path: Path) -> None:
    code = readme_js()
    assert 'const url = "http://127.0.0.1:8000";' in code
    script = ROOT / "tests" / "js" / f".run-{os.getpid()}.mjs"  # beside node_modules, so the import resolves
    script.write_text(code.replace("http://127.0.0.1:8000", server) + PROBE, encoding="utf-8")
    (tmp_path / "photo.jpg").write_bytes(encode(photo_with_shapes(640, 480, seed=8)))
    try:
        result = subprocess.run(
            [node, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    finally:
        script.unlink()
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    found = json.loads(line.removeprefix("RESULT "))
    assert len(found["labels"]) == 2  # top_k=2 from the query string
    assert all(set(label) == {"label", "score"} for label in found["labels"])
    assert found["boxes"] and all(box["score"] >= 0.6 for box in found["boxes"])  # threshold from the URL
    assert set(found["boxes"][0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    assert found["masks"] and all(mask["mask"].startswith("iVBORw0KGgo") for mask in found["masks"])  # PNG
    assert found["dropped"] == 5  # the client drops `parameters` beside raw bytes: the README says so
    assert found["dataError"]  # and segmentation with `data` throws in the client, as the README says
