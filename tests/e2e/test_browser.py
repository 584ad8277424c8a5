"""The web demo page in a real headless Chromium: load it from a live server (auth on), upload an image for
each task, wait for the answer, and check that the annotated image and the JSON appeared. Screenshots go to
$MVIT_SCREENSHOT_DIR (default test-artifacts/).

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (.ci/run installs them). Without
them the test skips with the reason, except where MVIT_REQUIRE_BROWSER=1 (CI), where it fails."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.api import create_app
from tests.support import ROOT, encode, live, make_settings, photo_with_shapes, wait_for

TOKEN = "browser-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "no chromium / chromedriver on PATH (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    missing = _missing()
    if missing:
        if os.environ.get("MVIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MVIT_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER or ""), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server_url(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[str]:
    settings = make_settings(
        model_dir, models=[str(model_dir), str(seg_model_dir), str(det_model_dir)], api_tokens=TOKEN
    )
    app = create_app(settings)
    with live(app) as port:
        wait_for(lambda: app.state.manager.ready, "the models to load", 120)
        yield f"http://127.0.0.1:{port}"


def test_demo_page_in_a_real_browser(browser: object, server_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser  # type: ignore[assignment]
    shots = Path(os.environ.get("MVIT_SCREENSHOT_DIR", ROOT / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(photo_with_shapes(640, 480, seed=12), quality=92))

    driver.get(f"{server_url}/")  # type: ignore[attr-defined]
    find = driver.find_element  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 60)
    find(By.ID, "file").send_keys(str(photo))
    assert "photo.jpg" in find(By.ID, "filename").text

    # no token yet: the page shows the service's 401 message
    find(By.ID, "run").click()
    wait.until(lambda d: "error" in find(By.ID, "status").get_attribute("class"))
    assert find(By.ID, "status").text.startswith("401: This service needs an API token")
    assert "401" in find(By.ID, "models").text  # the model list needs the token too, and says so

    find(By.ID, "token").send_keys(TOKEN)
    for task, route in (
        ("classification", "/classify"),
        ("segmentation", "/segment"),
        ("detection", "/detect"),
    ):
        Select(find(By.ID, "task")).select_by_visible_text(task)
        find(By.ID, "params").clear()
        if task == "detection":
            find(By.ID, "params").send_keys("threshold=0.3")  # the form's parameters reach the route
        find(By.ID, "run").click()
        wait.until(lambda d, r=route: find(By.ID, "rendered").get_attribute("alt").startswith(r))
        status = find(By.ID, "status")
        assert status.text.startswith("Done") and "error" not in (status.get_attribute("class") or "")
        natural = driver.execute_script(  # type: ignore[attr-defined]
            "const i = document.getElementById('rendered'); return i.complete ? [i.naturalWidth, i.naturalHeight] : null;"
        )
        assert natural == [640, 480], natural  # the annotated image arrived and decoded
        answer = json.loads(find(By.ID, "json").text)
        assert isinstance(answer, list) and answer, answer
        assert "ms round trip" in find(By.ID, "latency").text
        models = find(By.ID, "models").text
        assert "mobilevitv2-0.5-voc-deeplabv3-512-random: image-segmentation at /segment" in models, models
        assert "random demo weights" in models
        save_jpeg(driver.get_screenshot_as_png(), shots / f"demo-{task}.jpg")  # type: ignore[attr-defined]
        save_jpeg(find(By.ID, "rendered").screenshot_as_png, shots / f"render-{task}.jpg")
    assert (shots / "demo-segmentation.jpg").stat().st_size > 10_000


def save_jpeg(png: bytes, path: Path) -> None:
    """Screenshots as JPEG: a tenth of the PNG's size, small enough to keep in the repository."""
    Image.open(io.BytesIO(png)).convert("RGB").save(path, format="JPEG", quality=85)
