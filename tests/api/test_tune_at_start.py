"""`tune_at_start_s`: a model without a tuning record for this machine is measured while it loads, the
record lands in its folder (or, where the folder is read-only, applies to this process only), the next
start reads it instead of measuring, and explicit settings still win."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

from app.repository import read_model_dir
from app.repository.tuning import TUNING_FILE, TuningRecord, read_records, write_record
from app.runtime import measure_tuning, models
from app.runtime.apply_tuning import choice_given, machine_key
from tests.support import encode, make_settings, photo_like, serving

BUDGET_S = 1.0  # the tiny test model runs a batch in milliseconds


@pytest.fixture
def folder(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def test_a_model_without_a_record_is_measured_at_start_and_the_record_kept(
    folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"backend": "onnx", "tune_at_start_s": BUDGET_S}
    with (
        caplog.at_level(logging.INFO, logger="app.runtime.measure_tuning"),
        serving(folder, **settings) as client,
    ):
        described = client.get("/models").json()[0]
        assert client.post("/classify", content=encode(photo_like(320, 240, seed=5))).status_code == 200

    [record] = read_records(folder)
    assert record.key == machine_key(make_settings(folder, **settings))
    assert record.command == f"tuned at start (MVIT_TUNE_AT_START_S={BUDGET_S:g})"
    # Of the grid (batch sizes 1, 2, 4, 8 x instances 1, 2 on 2 threads), what fit in the budget.
    grid = {(batch, instances) for batch in (1, 2, 4, 8) for instances in (1, 2)}
    assert record.measured and {(r["max_batch_size"], r["instances"]) for r in record.measured} <= grid
    tuning = described["tuning"]
    assert tuning["tuned"] is True and tuning["tuned_by"] == record.command
    assert tuning["applied"] == record.chosen
    assert (described["max_batch_size"], described["instances"]) == (
        record.chosen["max_batch_size"],
        record.chosen["instances"],
    )
    assert any("no tuning record for this machine; measuring for about 1 s" in m for m in caplog.messages)
    assert any(f"recorded in {folder / TUNING_FILE}" in m for m in caplog.messages)

    # The next start on this machine reads the record and measures nothing.
    def measured_again(*_: object, **__: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(models, "tune_at_start", measured_again)
    with serving(folder, **settings) as client:
        assert client.get("/models").json()[0]["tuning"]["tuned_at"] == record.tuned_at


def test_a_record_measured_on_another_file_is_measured_again(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(folder, backend="onnx", tune_at_start_s=BUDGET_S)
    with serving(folder, backend="onnx"):  # exports model.onnx
        pass
    write_record(folder, TuningRecord(machine_key(settings), {"max_batch_size": 8}, artifact_sha256="0" * 64))
    with (
        caplog.at_level(logging.INFO, logger="app.runtime.measure_tuning"),
        serving(folder, backend="onnx", tune_at_start_s=BUDGET_S) as client,
    ):
        tuning = client.get("/models").json()[0]["tuning"]
    assert tuning["tuned"] is True and tuning["tuned_by"].startswith("tuned at start")
    assert any(
        "this machine's tuning record was measured on another model.onnx; measuring for about" in m
        for m in caplog.messages
    )
    [record] = read_records(folder)  # replaced
    assert record.artifact_sha256 != "0" * 64


def test_a_read_only_model_folder_is_tuned_for_this_process_only(
    folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def read_only(path: Path, record: object) -> Path:
        raise PermissionError(13, "Permission denied", str(path / TUNING_FILE))

    monkeypatch.setattr(measure_tuning, "write_record", read_only)
    with (
        caplog.at_level(logging.INFO, logger="app.runtime.measure_tuning"),
        serving(folder, backend="onnx", tune_at_start_s=BUDGET_S) as client,
    ):
        described = client.get("/models").json()[0]
    assert described["tuning"]["tuned"] is True
    assert not (folder / TUNING_FILE).exists()
    assert any(
        "not recorded (Permission denied): this process only, the next start measures again" in m
        for m in caplog.messages
    )


def test_a_set_batch_size_picks_the_instances_measured_best_for_it(folder: Path) -> None:
    with serving(folder, backend="onnx", tune_at_start_s=BUDGET_S, max_batch_size=4) as client:
        described = client.get("/models").json()[0]
    [record] = read_records(folder)
    assert {r["max_batch_size"] for r in record.measured} <= {1, 2, 4, 8}  # the grid, for any later setting
    tuning = described["tuning"]
    assert tuning["set_by_operator"] == {"max_batch_size": 4}
    assert tuning["applied"] == {
        k: v for k, v in choice_given(record, {"max_batch_size": 4}).items() if k != "max_batch_size"
    }
    assert described["max_batch_size"] == 4


def test_with_batch_size_and_instances_set_nothing_is_measured(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"backend": "onnx", "tune_at_start_s": 30.0, "max_batch_size": 3, "instances": 1}
    with (
        caplog.at_level(logging.INFO, logger="app.runtime.measure_tuning"),
        serving(folder, **settings) as client,
    ):
        described = client.get("/models").json()[0]
    assert (described["max_batch_size"], described["instances"]) == (3, 1)
    assert described["tuning"]["tuned"] is False
    assert not (folder / TUNING_FILE).exists()
    assert any(
        "not tuned at start: max_batch_size and instances set explicitly" in m for m in caplog.messages
    )


def test_torch_with_its_batch_size_set_is_not_measured(folder: Path) -> None:
    """torch has one instance: its batch size is all there is to choose."""
    settings = make_settings(folder, backend="torch", tune_at_start_s=30.0, max_batch_size=4)
    tuned, tuning = measure_tuning.tune_at_start(read_model_dir(folder), settings, (256, 256))
    assert tuned is settings and tuning.record is None
    assert not (folder / TUNING_FILE).exists()


def test_without_the_setting_nothing_is_measured(folder: Path) -> None:
    with serving(folder, backend="onnx") as client:
        assert client.get("/models").json()[0]["tuning"]["tuned"] is False
    assert not (folder / TUNING_FILE).exists()


def test_the_budget_is_spread_over_one_round_of_the_grid() -> None:
    # 8 configurations of 3 s and 2 lone-request runs of 1.5 s: 27 s.
    assert measure_tuning.seconds_per_configuration(27.0, configurations=8, backends=2) == 3.0


def test_past_the_deadline_what_was_measured_decides(folder: Path) -> None:
    def measured(deadline: float | None) -> list[measure_tuning.Measurement]:
        plan = measure_tuning.Plan([1, 2], [1, 2], seconds=0.01, rounds=2, min_calls=1, deadline=deadline)
        options = make_settings(folder, backend="onnx").model_options()
        return measure_tuning.measure(
            read_model_dir(folder), options, (256, 256), plan, progress=lambda _: None
        )

    everything = measured(deadline=None)
    assert len(everything) == 4
    assert all(len(m.throughputs) == len(m.lone_latencies_ms) == 2 for m in everything)
    [first] = measured(deadline=time.perf_counter())  # already past: one configuration, never none
    assert len(first.throughputs) == 1


def test_torch_is_tuned_for_its_batch_size_only(folder: Path) -> None:
    with serving(folder, backend="torch", tune_at_start_s=1.0) as client:
        described = client.get("/models").json()[0]
    [record] = json.loads((folder / TUNING_FILE).read_text())["records"]
    assert record["key"]["backend"] == "torch" and set(record["chosen"]) == {"max_batch_size"}
    assert {row["instances"] for row in record["measured"]} == {1}  # torch's threads are per process
    assert described["max_batch_size"] == record["chosen"]["max_batch_size"]


def test_a_shutdown_while_tuning_stops_it_and_records_nothing(folder: Path) -> None:
    stop = threading.Event()
    stop.set()  # as the server's shutdown sets it, here before the first configuration
    model_dir = read_model_dir(folder)
    with pytest.raises(measure_tuning.TuningStopped):
        measure_tuning.tune_at_start(
            model_dir, make_settings(folder, backend="onnx", tune_at_start_s=600), (256, 256), stop
        )
    assert not (folder / TUNING_FILE).exists()
