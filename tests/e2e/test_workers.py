"""`mvit serve --workers N`: N processes on one port, answering as one server does; a killed worker is
replaced while the others keep answering; /metrics sums every worker; SIGTERM drains them all and exits 0;
a model that cannot load stops them all with status 1."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.api.workers import QUICK_DEATH_S, Slot, Supervisor, Worker, claim_port, worker_settings
from app.config import ServerSettings
from app.repository.tuning import read_records
from app.tools.load import closed_loop
from app.tools.measure_workers import photos
from app.tools.serving import free_port, loopback_url, mvit_serve
from benchmarks.stop_time import alive, descendants
from tests.support import copy_model, mvit, serving, start_server, wait_for, wait_until_ready

WORKER = re.compile(r"\[worker (\d+)\] mvit\.access: POST /classify 200")


def workers_of(server: int) -> set[int]:
    """The worker processes below the supervisor (not multiprocessing's resource tracker)."""
    found = set()
    for pid in descendants(server):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            pass
    return found


def count(metrics: str, line_start: str) -> float:
    [value] = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(line_start)]
    return value


CLASSIFY_200 = 'mvit_request_duration_seconds_count{endpoint="/classify",model="mobilevitv2-0.5-imagenet1k-256-random",status="200"}'


def test_two_workers_share_the_port_answer_as_one_server_and_sum_their_metrics(
    model_dir: Path, jpeg_bytes: bytes
) -> None:
    with serving(model_dir) as client:
        expected = client.post("/classify", content=jpeg_bytes).json()
    process, url = start_server("--model", str(model_dir), "--workers", "2", "--log-format", "text")
    try:
        wait_until_ready(process, url, timeout=120)
        workers = workers_of(process.pid)
        # Each in a process group of its own: a terminal's Ctrl-C reaches the supervisor alone, which stops
        # each worker once (a second signal would cut its drain short).
        assert len(workers) == 2 and all(os.getpgid(pid) == pid for pid in workers)
        answers = [httpx.post(f"{url}/classify", content=jpeg_bytes, timeout=30) for _ in range(24)]
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert {answer.status_code for answer in answers} == {200}
    for answer in answers:  # the same model, one inference thread per worker instead of two
        got = answer.json()
        assert [item["label"] for item in got] == [item["label"] for item in expected]
        assert [item["score"] for item in got] == pytest.approx(
            [item["score"] for item in expected], rel=1e-4
        )
    served_by = [int(number) for number in WORKER.findall(output)]
    assert len(served_by) == 24 and set(served_by) == {0, 1}, served_by  # both answered
    assert count(metrics, CLASSIFY_200) == 24  # from whichever worker answered /metrics: the sum
    assert count(metrics, "mvit_models_ready ") == 1 and count(metrics, "mvit_worker_restarts_total ") == 0
    assert "drained in" in output and not workers_of(process.pid)


def test_a_burst_of_keep_alive_connections_is_shared_by_the_workers(model_dir: Path, tmp_path: Path) -> None:
    """A proxy's connection pool opens its connections at once and keeps them: the first worker to wake
    must not take them all."""
    port, log = free_port(), tmp_path / "server.log"
    with log.open("w") as output:  # a file, not a pipe: the access lines must never block the workers
        command = mvit_serve("--model", str(model_dir), "--workers", "2", "--log-format", "text", port=port)
        process = subprocess.Popen(command, stdout=output, stderr=output)
        try:
            wait_until_ready(process, loopback_url(port), timeout=120)
            result = asyncio.run(
                closed_loop("127.0.0.1", port, "/classify", photos(2), 32, 3.0, 400, request_timeout_s=30)
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    served_by = Counter(int(number) for number in WORKER.findall(log.read_text()))
    assert result.statuses == {"200": result.ok} and sum(served_by.values()) == result.ok
    assert min(served_by[0], served_by[1]) >= result.ok / 10, served_by


def test_a_killed_worker_is_replaced_while_the_other_serves(model_dir: Path, jpeg_bytes: bytes) -> None:
    process, url = start_server("--model", str(model_dir), "--workers", "2", "--log-level", "warning")
    try:
        wait_until_ready(process, url, timeout=120)
        first = httpx.post(f"{url}/classify", content=jpeg_bytes, timeout=30)
        wait_for(lambda: count(httpx.get(f"{url}/metrics").text, "mvit_models_ready ") == 1, "both workers")
        victim, survivor = sorted(workers_of(process.pid))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim), "the killed worker to be gone")  # what it held is reset
        # Until the replacement is ready, /ready says so (whichever worker answers), and the survivor
        # answers every request: nothing is accepted by a worker still loading.
        readiness, statuses = (
            [],
            [],
        )  # /ready: the first 503 (once the supervisor has seen the death), then 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = httpx.get(f"{url}/ready", timeout=30)
            if answer.status_code == 503 or readiness:
                readiness.append(answer)
            if readiness and answer.status_code == 200:
                break
            statuses.append(httpx.post(f"{url}/classify", content=jpeg_bytes, timeout=30).status_code)
        assert survivor in workers_of(process.pid) and victim not in workers_of(process.pid)
        assert len(workers_of(process.pid)) == 2
        assert readiness[0].status_code == 503 and readiness[-1].status_code == 200
        assert readiness[0].json()["error"].startswith("1 of 2 workers not ready")
        assert readiness[-1].json()["workers_ready"] == 2
        statuses += [
            httpx.post(f"{url}/classify", content=jpeg_bytes, timeout=30).status_code for _ in range(8)
        ]
        metrics = httpx.get(f"{url}/metrics").text
        workers = workers_of(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert first.status_code == 200 and set(statuses) == {200}, statuses
    assert count(metrics, "mvit_worker_restarts_total ") == 1
    assert count(metrics, CLASSIFY_200) == 1 + len(statuses)  # the dead worker's counts are kept
    assert output.count("died (exit status -9): starting another") == 1, output
    assert process.returncode == 0 and not any(alive(pid) for pid in workers)


def test_a_stuck_worker_is_killed_and_replaced(model_dir: Path, jpeg_bytes: bytes) -> None:
    process, url = start_server(
        "--model",
        str(model_dir),
        "--workers",
        "2",
        "--worker-heartbeat-timeout-s",
        "2",
        "--log-level",
        "warning",
    )
    try:
        wait_until_ready(process, url, timeout=120)
        wait_for(lambda: count(httpx.get(f"{url}/metrics").text, "mvit_models_ready ") == 1, "both workers")
        victim = min(workers_of(process.pid))
        os.kill(victim, signal.SIGSTOP)  # alive, holding the port, answering nothing
        wait_for(lambda: not alive(victim), "the stuck worker to be killed", timeout=30)
        wait_for(lambda: len(workers_of(process.pid)) == 2, "a replacement worker", timeout=60)
        statuses = {
            httpx.post(f"{url}/classify", content=jpeg_bytes, timeout=30).status_code for _ in range(4)
        }
        restarts = count(httpx.get(f"{url}/metrics").text, "mvit_worker_restarts_total ")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert statuses == {200} and restarts == 1
    assert re.search(
        rf"worker \d \(pid {victim}\) stopped answering \(no heartbeat for [\d.]+ s\): killing it", output
    )
    assert process.returncode == 0, output


def test_a_model_that_cannot_load_stops_every_worker(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_model(model_dir, tmp_path)  # a model folder as far as `mvit serve` checks before loading
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    process, _ = start_server("--model", str(broken), "--workers", "2")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in output, output
    assert "is not a readable safetensors file" in output and "before it served: stopping" in output


def test_mvit_tune_measures_worker_counts_over_http_and_workers_auto_applies_its_choice(
    model_dir: Path, tmp_path: Path
) -> None:
    folder = copy_model(model_dir, tmp_path)
    tuned = mvit(
        "tune", str(folder), "--workers", "2,1", "--inference-threads", "2", "--tune-each-share",
        "--batch-sizes", "1,4", "--seconds", "0.5", "--rounds", "2", "--concurrency", "4",
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    *shares, record = read_records(folder)
    # First the batch sizes for each count's share of the two threads, then the servers.
    assert [(r.key.scope, r.key.threads) for r in shares] == [("backend", 2), ("backend", 1)]
    assert "batch sizes for 2 worker(s), 1 inference thread(s) each:" in tuned.stderr
    assert record.key.scope == "service" and record.key.threads == 2
    assert [row["workers"] for row in record.measured] == [1, 2]
    assert all(row["requests_per_s"] > 0 and row["concurrency"] == 4 for row in record.measured)
    assert record.measured[0]["relative"] == 1.0 and record.measured[1]["relative"] > 0  # paired with 1
    chosen = record.chosen["workers"]
    assert chosen in (1, 2) and f"chosen: {{'workers': {chosen}}}" in tuned.stdout
    # Two rounds, each over both servers, in an order that rotates.
    rounds = re.findall(r"round (\d)/2: (\d) worker\(s\): [\d.]+ req/s", tuned.stderr)
    assert rounds == [("1", "1"), ("1", "2"), ("2", "2"), ("2", "1")], tuned.stderr

    process, url = start_server("--model", str(folder), "--workers", "auto", "--log-format", "text")
    try:
        wait_until_ready(process, url, timeout=120)
        answer = httpx.post(f"{url}/classify", content=photos(1)[0], timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert answer.status_code == 200 and process.returncode == 0, output
    assert f"--workers auto: {chosen} (measured best on this machine by `mvit tune --workers`)" in output


def test_mvit_tune_says_which_server_failed_to_start(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_model(model_dir, tmp_path)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    tuned = mvit(
        "tune", str(broken), "--workers", "1", "--inference-threads", "2", "--seconds", "1", "--rounds", "1"
    )
    assert tuned.returncode == 1 and "Traceback" not in tuned.stderr
    assert "mvit tune: `mvit serve --workers 1` exited with 1:" in tuned.stderr
    assert "is not a readable safetensors file" in tuned.stderr
    # Without --tune-each-share, what the servers run untuned is said first.
    assert "no batch-size record for 2 inference thread(s): 1 worker(s) run the defaults" in tuned.stderr


def test_a_port_in_use_is_refused_even_by_another_workers_server_still_loading() -> None:
    port = free_port()
    first, guard = claim_port("127.0.0.1", port)  # bound, not listening: its workers are loading
    try:
        with pytest.raises(
            OSError, match=f"cannot listen on 0.0.0.0:{port}: another `mvit serve --workers` has it"
        ):
            claim_port("0.0.0.0", port)
    finally:
        first.close()
        if guard is not None:
            guard.close()
    with socket.create_server(("127.0.0.1", port)), pytest.raises(OSError, match="Address already in use"):
        claim_port("127.0.0.1", port)  # any other server listening there
    second, guard = claim_port("127.0.0.1", port)  # released with the first
    second.close()
    if guard is not None:
        guard.close()


def test_a_worker_that_keeps_dying_is_restarted_ever_later() -> None:
    with socket.socket() as sock:
        supervisor = Supervisor(ServerSettings(models=[], workers=2), sock)
    slot = Slot(0, multiprocessing.get_context("spawn").Event(), supervisor.ready, supervisor.heartbeats)
    now = time.monotonic()
    quick = [supervisor.restart_delay(Worker(slot, None, True, started_at=now)) for _ in range(8)]  # type: ignore[arg-type]
    assert quick == [0, 1, 2, 4, 8, 16, 30, 30]
    assert supervisor.restart_delay(Worker(slot, None, True, started_at=now - QUICK_DEATH_S)) == 0  # type: ignore[arg-type]
    assert supervisor.restart_delay(Worker(slot, None, True, started_at=now)) == 0  # the count starts over
    with pytest.raises(TypeError, match="resolve --workers auto"), socket.socket() as sock:
        Supervisor(ServerSettings(models=[], workers="auto"), sock)


def test_threads_are_divided_among_the_workers() -> None:
    each = worker_settings(ServerSettings(models=[], workers=3, inference_threads=16, decode_threads=8))
    assert (each.inference_threads, each.decode_threads) == (5, 2)
    assert (
        worker_settings(
            ServerSettings(models=[], workers=4, inference_threads=2, decode_threads=2)
        ).inference_threads
        == 1
    )


def test_workers_and_ray_are_a_usage_error() -> None:
    result = mvit("serve", "--model", "m", "--workers", "2", "--ray")
    assert result.returncode == 2 and "--workers and --ray" in result.stderr
