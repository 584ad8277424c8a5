"""Every image target built and run as a user runs it: model folder read-only, root filesystem read-only,
a tmpfs /tmp, no capabilities. x86-64 answers are byte for byte those of a venv install of the image's own
package versions; arm64 (under emulation) makes the same decisions with scores within the parity tolerance."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.parity import tolerance
from tests.images.lane import (
    READY_BOUND_S,
    REPORT,
    STOP_GRACE_S,
    VARIANTS,
    Build,
    Container,
    Engine,
    serve_checked,
)
from tests.support import ROOT, encode, free_port, photo_like, photo_with_shapes, wait_until_ready

PHOTO = encode(photo_with_shapes(640, 480, seed=0), quality=90)  # the demo detector finds 6 boxes in it
BIG_PHOTO = encode(photo_like(2048, 1536, seed=2), quality=90)  # slower to answer: still in flight at SIGTERM
ROUTES = ("/classify", "/segment", "/detect")


def answers(url: str) -> dict[str, bytes]:
    out = {}
    for route in ROUTES:
        response = httpx.post(f"{url}{route}", content=PHOTO, timeout=600)
        assert response.status_code == 200, (route, response.status_code, response.text[:500])
        out[route] = response.content
    return out


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{target}-{arch}" for target, arch in VARIANTS])
def served(
    request: pytest.FixtureRequest, engine: Engine, build: Callable[[str, str], Build], model_repository: Path
) -> Iterator[tuple[Build, Container]]:
    target, arch = request.param
    image = build(target, arch)
    container, ready_s = serve_checked(
        engine, image.tag, model_repository, f"mvit-lane-{target}-{arch}", arch
    )
    REPORT.append(f"ready  {target:<14} {arch}: {ready_s:5.1f} s after start (bound {READY_BOUND_S[arch]} s)")
    yield image, container
    container.remove()


@pytest.fixture(scope="session")
def venv_answers(
    engine: Engine,
    build: Callable[[str, str], Build],
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], dict[str, bytes]]:
    """The answers of a venv install of an image's own package versions (`pip freeze` in the image), the
    project's wheel and the image's MVIT_ settings, serving the same models on this machine."""
    cache: dict[str, dict[str, bytes]] = {}
    wheels = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
    )

    def get(target: str) -> dict[str, bytes]:
        if target not in cache:
            tag = build(target, "amd64").tag
            frozen = engine.run(
                "run", "--rm", "--network", "none", "--entrypoint", "pip", tag, "freeze"
            ).stdout
            requirements = [line for line in frozen.splitlines() if not line.startswith("mobilevitv2-serve")]
            folder = tmp_path_factory.mktemp(f"venv-{target}")
            (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
            subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
            pip = [str(folder / "venv/bin/python"), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, "-r", str(folder / "requirements.txt")], check=True, timeout=1200)
            subprocess.run([*pip, "--no-deps", str(next(wheels.glob("*.whl")))], check=True)
            env = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Env}}", tag).stdout)
            settings = dict(item.split("=", 1) for item in env if item.startswith("MVIT_"))
            port = free_port()
            settings |= {
                "MVIT_HOST": "127.0.0.1",
                "MVIT_PORT": str(port),
                "MVIT_MODEL_REPOSITORY": str(model_repository),
            }
            process = subprocess.Popen(
                [str(folder / "venv/bin/mvit"), "serve"],
                env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **settings},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                wait_until_ready(process, url, timeout=120)
                cache[target] = answers(url)
            finally:
                process.terminate()
                process.wait(timeout=60)
        return cache[target]

    return get


def test_answers_all_three_tasks(
    served: tuple[Build, Container], venv_answers: Callable[[str], dict[str, bytes]]
) -> None:
    image, container = served
    got = answers(container.url)
    if image.arch == "amd64":
        expected = venv_answers(image.target)
        for route in ROUTES:
            assert got[route] == expected[route], f"{image.tag} {route}: not the venv install's bytes"
    else:
        expected = venv_answers(image.target)
        same_decisions(got, expected)
        REPORT.append(f"arm64 {image.target} against x86-64: {summary(got)} | {summary(expected)}")


def scores_close(got: list[float], expected: list[float], what: str) -> None:
    limit = tolerance(np.asarray(expected))
    worst = float(np.max(np.abs(np.asarray(got) - np.asarray(expected)), initial=0.0))
    assert worst <= limit, f"{what}: scores differ by {worst:.2e} > {limit:.2e}"


def mask(item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["mask"]))))


def same_decisions(got_bytes: dict[str, bytes], expected_bytes: dict[str, bytes]) -> None:
    """Labels in the same order, masks within 0.1% of pixels, boxes within 1 px, scores within tolerance."""
    got = {route: json.loads(body) for route, body in got_bytes.items()}
    expected = {route: json.loads(body) for route, body in expected_bytes.items()}
    for route in ROUTES:
        assert [item["label"] for item in got[route]] == [item["label"] for item in expected[route]], route
        if route != "/segment":
            scores_close([i["score"] for i in got[route]], [i["score"] for i in expected[route]], route)
    for a, b in zip(got["/segment"], expected["/segment"], strict=True):
        differing = float(np.mean(mask(a) != mask(b)))
        assert differing <= 1e-3, f"mask {a['label']}: {differing:.2%} of pixels differ"
    for a, b in zip(got["/detect"], expected["/detect"], strict=True):
        assert all(abs(a["box"][k] - b["box"][k]) <= 1 for k in b["box"]), (a, b)


def summary(bodies: dict[str, bytes]) -> str:
    out = {route: json.loads(body) for route, body in bodies.items()}
    top = out["/classify"][0]
    boxes = [(d["label"], round(d["score"], 4), tuple(d["box"].values())) for d in out["/detect"][:2]]
    return (
        f"top-1 {top['label']!r} {top['score']:.6f}; {len(out['/segment'])} segments; "
        f"{len(out['/detect'])} boxes {boxes}"
    )


def test_stop_lets_in_flight_requests_finish_and_exits_0(
    served: tuple[Build, Container],
) -> None:
    """`podman stop` (SIGTERM) with requests in flight: each one accepted is answered, then the process exits
    0. Requests that had not connected yet may be refused: the server stops accepting on SIGTERM."""
    image, container = served
    # Emulated arm64 takes tens of seconds per segmentation: one request is enough there.
    count, photo = (8, BIG_PHOTO) if image.arch == "amd64" else (1, PHOTO)
    outcomes: list[int | str] = []

    def send() -> None:
        try:
            outcomes.append(httpx.post(f"{container.url}/segment", content=photo, timeout=600).status_code)
        except httpx.ConnectError:
            outcomes.append("refused")
        except httpx.HTTPError as exc:  # accepted, then dropped
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and in_flight(container.url) < count and not outcomes:
        time.sleep(0.01)
    seen = in_flight(container.url)
    start = time.monotonic()
    exit_code = container.stop(STOP_GRACE_S[image.arch])
    for thread in threads:
        thread.join(timeout=600)
    REPORT.append(
        f"stop   {image.target:<14} {image.arch}: {seen} of {count} in flight at SIGTERM, stopped in "
        f"{time.monotonic() - start:.1f} s, exit {exit_code}, answers {outcomes}"
    )
    assert seen >= 1, "no request in flight when the stop was sent: the test proves nothing"
    assert set(outcomes) <= {200, "refused"} and outcomes.count(200) >= seen, outcomes
    assert exit_code == 0, container.logs()[-3000:]


def in_flight(url: str) -> int:
    try:
        text = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mvit_requests_in_flight{") and 'endpoint="/segment"' in line
        )
    )
