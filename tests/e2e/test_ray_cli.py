"""Ray Serve without a long-lived cluster: the Serve config for `serve deploy` builds what it says, and
`mvit serve --ray` serves from its replicas and stops cleanly (it starts and stops its own Ray instance;
tests/e2e/test_ray_serve.py's instance is gone by the time this module runs)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from benchmarks.stop_time import alive, descendants
from tests.support import ROOT, encode, mvit, photo_like, start_server, wait_until_ready

pytest.importorskip("ray", reason="Ray Serve is the [ray] extra")

PHOTO = encode(photo_like(320, 240, seed=32))


def test_the_serve_config_is_valid_and_builds_the_deployment() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from app.ray_serve import build_app

    config = yaml.safe_load((ROOT / "deploy/ray/serve_config.yaml").read_text())
    application_config = ServeDeploySchema.model_validate(config).applications[0]
    assert application_config.import_path == "app.ray_serve:build_app"
    deployment = build_app({**application_config.args, "models": ["x"]})._bound_deployment
    options = deployment._deployment_config
    assert options.autoscaling_config.target_ongoing_requests == 8
    assert options.max_ongoing_requests > application_config.args["max_queue_size"]  # the replica says 429
    assert options.backpressure_config.status_code == 429
    assert options.graceful_shutdown_timeout_s == application_config.args["drain_timeout_s"]
    assert deployment.ray_actor_options["num_cpus"] == 2
    with pytest.raises(ValueError, match="unknown argument"):
        build_app({"max_queue_sise": 3})


def test_mvit_serve_ray_one_command_and_its_stop_leaves_no_ray_process(model_dir: Path) -> None:
    process, url = start_server(
        "--model", str(model_dir), "--ray", "--replicas", "2", "--log-level", "warning"
    )
    try:
        wait_until_ready(process, url, timeout=120)
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(f"{url}/classify", content=PHOTO, timeout=60), range(12))
            )
        assert {answer.status_code for answer in answers} == {200}
        assert len({answer.headers["x-replica-id"] for answer in answers}) == 2
        ray_processes = descendants(process.pid)
        assert len(ray_processes) >= 4  # GCS, raylet, the controller, the proxy and the replicas at least
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    assert status == 0
    deadline = time.monotonic() + 5  # reaped by init once their parent is gone
    while time.monotonic() < deadline and any(map(alive, ray_processes)):
        time.sleep(0.1)
    assert not [pid for pid in ray_processes if alive(pid)]


def test_mvit_serve_ray_refuses_what_it_cannot_run(model_dir: Path) -> None:
    without_ray = mvit("serve", "--model", str(model_dir), "--replicas", "2")
    assert without_ray.returncode == 2 and "usage: mvit serve" in without_ray.stderr
    assert "mvit serve: error: --replicas needs --ray" in without_ray.stderr
    bad = mvit("serve", "--model", str(model_dir), "--ray", "--replicas", "3-1")
    assert bad.returncode == 2 and "min_replicas 3 > max_replicas 1" in bad.stderr
