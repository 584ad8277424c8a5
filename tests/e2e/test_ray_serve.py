"""The service as a Ray Serve application on a real local Ray instance (loopback): two replicas answer as
the single-process service does, both take traffic, overload is 429 (never 503), a replica killed in a
burst costs no request a silent failure and comes back, removing the application drains it, and nothing
of Ray is left running."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import encode, free_port, photo_like, serving

ray = pytest.importorskip("ray", reason="Ray Serve is the [ray] extra")
from ray import serve  # noqa: E402

from app.ray_serve import DEPLOYMENT_NAME, RayOptions, application  # noqa: E402

PHOTO = encode(photo_like(640, 480, seed=31))
ROUTES = ("/classify", "/segment", "/detect")
MAX_QUEUE_SIZE = 4  # per replica: small, so that a burst overloads it


def ray_processes() -> set[int]:
    """Ray's own daemons (raylet, GCS, workers) on this machine."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if any(name in command for name in (b"raylet", b"gcs_server", b"ray::", b"default_worker.py")):
            found.add(int(pid))
    return found


@pytest.fixture(scope="module")
def models(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> list[str]:
    return [str(model_dir), str(seg_model_dir), str(det_model_dir)]


RAY_OPTIONS = RayOptions(num_replicas=2, num_cpus=1, max_queued_requests=4)


def settings_of(models: list[str], **changes: object) -> dict[str, object]:
    return {
        "models": models,
        "max_queue_size": MAX_QUEUE_SIZE,
        "drain_timeout_s": 30,
        "log_level": "warning",
        **changes,
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """A local Ray instance; yields the port of its Prometheus endpoint. Nothing of it survives."""
    before = ray_processes()
    metrics_port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _metrics_export_port=metrics_port,
    )
    try:
        yield metrics_port
    finally:
        ray.shutdown()
    deadline = time.monotonic() + 20
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes() - before, "Ray processes left running"


@pytest.fixture(scope="module")
def ray_url(cluster: int, models: list[str]) -> Iterator[str]:
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(settings_of(models), RAY_OPTIONS), name=DEPLOYMENT_NAME)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def classify(url: str, count: int, concurrency: int = 2) -> list[httpx.Response]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(
            pool.map(lambda _: httpx.post(f"{url}/classify", content=PHOTO, timeout=60), range(count))
        )


def replica_ids(url: str, count: int, concurrency: int = 2) -> set[str]:
    answers = classify(url, count, concurrency)
    assert all(answer.status_code == 200 for answer in answers)
    return {answer.headers["x-replica-id"] for answer in answers}


def eventually(served: Callable[[set[str]], bool], url: str, within_s: float) -> set[str]:
    """The replicas that answered, once `served(them)` holds; answers other than 200 meanwhile are
    allowed (a replica may be on its way out)."""
    deadline = time.monotonic() + within_s
    ids: set[str] = set()
    while time.monotonic() < deadline:
        ids = {a.headers["x-replica-id"] for a in classify(url, 8) if a.status_code == 200}
        if served(ids):
            return ids
        time.sleep(0.5)
    raise AssertionError(f"still served by {ids} after {within_s} s: {serve.status().applications}")


def test_two_replicas_answer_as_the_single_process_service(
    ray_url: str, models: list[str], model_dir: Path
) -> None:
    # A replica with 1 CPU runs 1 inference thread: so does the reference, for bit-identical floats.
    with serving(model_dir, models=models, inference_threads=1, decode_threads=1) as reference:
        for route in ROUTES:
            for params in ({}, {"threshold": 0.3} if route == "/detect" else {}):
                expected = reference.post(route, content=PHOTO, params=params)
                got = httpx.post(f"{ray_url}{route}", content=PHOTO, params=params, timeout=60)
                assert got.status_code == expected.status_code == 200
                assert got.json() == expected.json(), route
        bad = httpx.post(f"{ray_url}/classify", content=b"not an image", timeout=60)
        assert (
            bad.status_code == 400
            and bad.json() == reference.post("/classify", content=b"not an image").json()
        )


def test_both_replicas_take_traffic(ray_url: str) -> None:
    assert len(replica_ids(ray_url, 16)) == 2


def test_each_replicas_metrics_reach_rays_prometheus_endpoint(ray_url: str, cluster: int) -> None:
    served_by = replica_ids(ray_url, 8)
    deadline = time.monotonic() + 60
    found: set[str] = set()
    while time.monotonic() < deadline and found != served_by:
        text = httpx.get(f"http://127.0.0.1:{cluster}/metrics", timeout=10).text
        found = {
            line.split('replica="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("ray_mvit_request_duration_seconds_count{") and 'endpoint="/classify"' in line
        }
        time.sleep(1)
    assert found == served_by
    assert "ray_serve_num_http_requests_total" in text  # and Ray's own, in the same place


def test_overload_answers_429_with_retry_after_never_503(ray_url: str) -> None:
    with ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(f"{ray_url}/segment", content=PHOTO, timeout=120), range(48))
        )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429}, statuses
    refused = [answer for answer in answers if answer.status_code == 429]
    assert refused and statuses.count(200) >= 2 * MAX_QUEUE_SIZE
    assert all(int(answer.headers["retry-after"]) >= 1 for answer in refused)
    assert httpx.post(f"{ray_url}/classify", content=PHOTO, timeout=60).status_code == 200  # and it recovers


def test_a_replica_killed_in_a_burst_fails_requests_clearly_and_comes_back(ray_url: str) -> None:
    victim_id = next(iter(replica_ids(ray_url, 4, concurrency=1)))
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if victim_id in a["name"]]
    assert len(names) == 1, names
    victim = ray.get_actor(names[0], namespace="serve")

    def call(i: int) -> httpx.Response:
        if i == 6:
            ray.kill(victim, no_restart=True)
        return httpx.post(f"{ray_url}/classify", content=PHOTO, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(call, range(30)))
    for answer in answers:
        assert answer.status_code in (200, 408, 429, 500, 503), (answer.status_code, answer.text)
        if answer.status_code == 200:
            assert len(answer.json()) == 5  # complete
        elif answer.status_code == 408:
            # Ray re-sent a request the dying replica had already read the body of: the body does not
            # come again, and the other replica says so once its body timeout passes.
            assert "MVIT_BODY_TIMEOUT_S" in answer.json()["error"], answer.text
        else:
            assert answer.text.strip()  # says what went wrong
    assert sum(answer.status_code == 200 for answer in answers) >= 20
    deployment = eventually(lambda ids: len(ids) == 2 and victim_id not in ids, ray_url, 90)
    assert victim_id not in deployment
    status = serve.status().applications[DEPLOYMENT_NAME].deployments[DEPLOYMENT_NAME]
    assert status.status == "HEALTHY" and status.replica_states == {"RUNNING": 2}


def oip_request(images: int) -> dict[str, object]:
    data = [base64.b64encode(PHOTO).decode()] * images
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [images], "data": data}]}


def in_flight_while(change: Callable[[], None], url: str) -> tuple[httpx.Response, float]:
    """A 3-image segmentation request, sent; `change()` once it is being served; its answer, and how long
    after the change started it came (a request answered before the change proves nothing)."""
    infer = f"{url}/v2/models/mobilevitv2-0.5-voc-deeplabv3-512-random/infer"
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(httpx.post, infer, json=oip_request(3), timeout=120)
        time.sleep(0.5)  # three 640x480 maps take seconds on 2 cores: it is being computed now
        assert not request.done()
        started = time.monotonic()
        change()
        answer = request.result()
        return answer, time.monotonic() - started


def test_redeploying_and_deleting_drain_requests_in_flight(ray_url: str, models: list[str]) -> None:
    """Last to use the application: it removes it."""
    old_replicas = replica_ids(ray_url, 8)
    # A new version (another setting): Ray replaces both replicas, the old ones once idle.

    def redeploy() -> None:
        serve.run(application(settings_of(models, log_level="error"), RAY_OPTIONS), name=DEPLOYMENT_NAME)

    answer, _ = in_flight_while(redeploy, ray_url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [3, 480, 640]
    eventually(lambda ids: len(ids) == 2 and not ids & old_replicas, ray_url, 30)

    answer, waited = in_flight_while(lambda: serve.delete(DEPLOYMENT_NAME), ray_url)
    assert answer.status_code == 200, answer.text
    assert waited < 30
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{ray_url}/classify", content=PHOTO, timeout=5).raise_for_status()
