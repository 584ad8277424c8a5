"""docker-compose.yml, unedited, brought up by podman-compose: the edge service and a real Prometheus
scraping it. Grafana's image cannot be had here: its dashboard is checked statically (tests/deploy/test_deploy.py),
and here every metric its panels query must reach Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.images.lane import REPORT, Build, Engine, missing
from tests.support import ROOT, TASKS, encode, photo_like

COMPOSE_PROMETHEUS = "prom/prometheus:v2.55.1"  # the name docker-compose.yml gives; built locally here
DASHBOARD = ROOT / "deploy/grafana/dashboards/mvit.json"
# Counted only when something is rejected, which this test does not provoke.
EVENT_ONLY_METRICS = {"mvit_requests_rejected_total"}


def wait_for(check: Callable[[], object], what: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def prometheus_query(query: str) -> list[dict]:
    response = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": query}, timeout=5)
    return response.json()["data"]["result"]


@pytest.fixture(scope="module")
def compose_project(
    engine: Engine,
    build: Callable[[str, str], Build],
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    compose = shutil.which("podman-compose")
    if compose is None:
        missing("no podman-compose here: `bash scripts/setup-images.sh` installs it")
    engine.run("tag", build("edge", "amd64").tag, "localhost/mobilevitv2-serve:edge")
    engine.run(
        *engine.machine_args("amd64", "BASE"),
        "--tag",
        f"docker.io/{COMPOSE_PROMETHEUS}",
        str(ROOT / "tests/images/prometheus"),
    )
    # The project as a user has it: the compose file and the Prometheus configuration, unedited, and a
    # ./models the service may write its tuning record into.
    project = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", project)
    shutil.copytree(ROOT / "deploy/prometheus", project / "deploy/prometheus")
    shutil.copytree(model_repository, project / "models")
    subprocess.run(["chown", "-R", "10001:10001", str(project / "models")], check=True)
    command = [compose, "--project-name", "mvitlane"]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "MVIT_TUNE_AT_START_S": "3",
    }
    up = subprocess.run(
        [*command, "up", "--detach", "--no-build", "mvit", "prometheus"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield project
    finally:
        logs = subprocess.run(
            [*command, "logs", "mvit"], cwd=project, env=env, capture_output=True, text=True
        )
        REPORT.append(
            f"compose: mvit's last log line: {(logs.stdout.strip().splitlines() or [''])[-1][:150]}"
        )
        subprocess.run(
            [*command, "down", "--volumes"], cwd=project, env=env, capture_output=True, timeout=300
        )


def test_compose_brings_up_the_service_with_prometheus_scraping_it(compose_project: Path) -> None:
    start = time.monotonic()
    wait_for(
        lambda: httpx.get("http://127.0.0.1:8000/ready", timeout=2).status_code == 200, "/ready on :8000", 240
    )
    ready_s = time.monotonic() - start
    photo = encode(photo_like(640, 480, seed=1), quality=90)
    for route in ("/classify", "/segment", "/detect", "/classify"):
        assert httpx.post(f"http://127.0.0.1:8000{route}", content=photo, timeout=60).status_code == 200

    def mvit_target_up() -> bool:
        targets = httpx.get("http://127.0.0.1:9090/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return any(t["labels"].get("image") == "edge" and t["health"] == "up" for t in targets)

    wait_for(mvit_target_up, "Prometheus scraping mvit:8000", 90)
    samples = wait_for(
        lambda: prometheus_query('mvit_request_duration_seconds_count{endpoint="/classify",status="200"}'),
        "request durations in Prometheus",
        60,
    )
    assert sum(float(s["value"][1]) for s in samples) >= 2  # type: ignore[union-attr]

    queried = set(re.findall(r"\bmvit_[a-z_]+", DASHBOARD.read_text()))
    names = {re.sub(r"_(bucket|sum|count)$", "", name) for name in queried}
    absent = sorted(
        n for n in names - EVENT_ONLY_METRICS if not prometheus_query(f'{{__name__=~"{n}(_bucket|_count)?"}}')
    )
    assert not absent, f"dashboard metrics Prometheus has no samples of: {absent}"

    # Tuning at first start (on in compose) measured the models and wrote its record into ./models.
    records = list((compose_project / "models").glob("*/tuning*.json"))
    REPORT.append(
        f"compose: ready {ready_s:.0f} s after `up`, Prometheus target up, {len(names)} dashboard metrics "
        f"present, {len(records)} tuning records written to ./models"
    )
    assert len(records) == len(TASKS), sorted(p.name for p in (compose_project / "models").rglob("*"))
    assert json.loads(records[0].read_text())
