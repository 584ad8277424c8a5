"""`mvit tune` records (app/repository/tuning.py), the choice (app/runtime/measure_tuning.py), and how the server
applies a record (app/runtime/apply_tuning.py): only on the machine it was measured on, never over an explicit
setting."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from app.errors import CheckpointError
from app.repository import read_model_dir
from app.repository.tuning import (
    TUNING_FILE,
    MachineKey,
    TuningRecord,
    find_record,
    read_records,
    write_record,
)
from app.runtime import apply_tuning as apply_tuning_module
from app.runtime.apply_tuning import apply_tuning, auto_workers, machine_key, served_file_sha256, service_key
from app.runtime.measure_tuning import Configuration, Measurement, choose
from app.tools.measure_workers import choose as choose_workers
from app.tools.measure_workers import server_environment
from tests.support import make_settings

KEY = MachineKey("Some CPU", 2, "onnx", "fp32", "onnxruntime 1.0")


def measured(instances: int, batch: int, throughput: float, latency: float) -> Measurement:
    return Measurement(Configuration(instances, False, batch), [throughput], [latency])


def test_records_are_kept_per_machine(tmp_path: Path) -> None:
    write_record(tmp_path, TuningRecord(KEY, {"max_batch_size": 4}))
    other = MachineKey("Other CPU", 16, "onnx", "fp32", "onnxruntime 1.0")
    write_record(tmp_path, TuningRecord(other, {"max_batch_size": 8}))
    write_record(tmp_path, TuningRecord(KEY, {"max_batch_size": 2}))  # replaces the first
    assert [r.chosen for r in read_records(tmp_path)] == [{"max_batch_size": 8}, {"max_batch_size": 2}]
    assert find_record(tmp_path, KEY) == TuningRecord(KEY, {"max_batch_size": 2})
    assert find_record(tmp_path, MachineKey("Some CPU", 4, "onnx", "fp32", "onnxruntime 1.0")) is None


def test_a_damaged_tuning_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / TUNING_FILE).write_text('{"records": [{"key": {}}]}')
    with pytest.raises(CheckpointError, match="is not a tuning file `mvit tune` wrote"):
        read_records(tmp_path)


def test_the_choice_is_the_fastest_that_keeps_a_lone_request_fast() -> None:
    fast_but_slow_alone = measured(4, 8, throughput=120, latency=40)
    best = measured(2, 4, throughput=100, latency=11)
    lowest_latency = measured(1, 1, throughput=60, latency=10)
    assert choose([fast_but_slow_alone, best, lowest_latency], latency_slack=0.25) is best
    assert choose([fast_but_slow_alone, best, lowest_latency], latency_slack=4.0) is fast_but_slow_alone


def test_ties_prefer_the_smaller_batch() -> None:
    small, large = measured(2, 1, 100, 10), measured(2, 8, 100, 10)
    assert choose([large, small], latency_slack=0.25) is small


@pytest.fixture
def folder(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def test_a_record_for_this_machine_is_applied_where_nothing_says_otherwise(folder: Path) -> None:
    settings = make_settings(folder, backend="onnx")
    write_record(folder, TuningRecord(machine_key(settings), {"max_batch_size": 2, "instances": 1}))
    tuned, tuning = apply_tuning(read_model_dir(folder), settings)
    assert (tuned.max_batch_size, tuned.instances) == (2, 1)
    assert tuning.describe(read_model_dir(folder))["applied"] == {"max_batch_size": 2, "instances": 1}

    explicit = make_settings(folder, backend="onnx", max_batch_size=8)
    tuned, tuning = apply_tuning(read_model_dir(folder), explicit)
    assert (tuned.max_batch_size, tuned.instances) == (8, 1)  # the operator's setting wins
    assert tuning.applied == {"instances": 1}


def row(batch: int, instances: int, throughput: float, latency: float) -> dict[str, object]:
    return measured(instances, batch, throughput, latency).row()


def test_a_setting_the_operator_fixed_picks_the_rest_from_the_measured_rows(folder: Path) -> None:
    """The record's choice is for batch 1; with the batch size set to 8, the instances measured best at
    batch 8 apply, not those of the batch-1 choice."""
    settings = make_settings(folder, backend="onnx")
    rows = [row(1, 2, 100, 10), row(8, 1, 90, 10), row(8, 2, 70, 10), row(1, 1, 60, 9)]
    chosen = {"max_batch_size": 1, "instances": 2, "onnx_allow_spinning": False}
    write_record(folder, TuningRecord(machine_key(settings), chosen, rows))
    model_dir = read_model_dir(folder)

    tuned, tuning = apply_tuning(model_dir, make_settings(folder, backend="onnx", max_batch_size=8))
    assert (tuned.max_batch_size, tuned.instances) == (8, 1)
    described = tuning.describe(model_dir)
    assert described["set_by_operator"] == {"max_batch_size": 8}
    assert described["applied"] == {"instances": 1, "onnx_allow_spinning": False}
    assert described["chosen"] == chosen  # the record is unchanged
    assert tuning.summary(model_dir) == (
        "tuned for this machine ({'instances': 1, 'onnx_allow_spinning': False}; "
        "set by the operator: {'max_batch_size': 8})"
    )

    tuned, _ = apply_tuning(model_dir, make_settings(folder, backend="onnx", instances=1))
    assert (tuned.max_batch_size, tuned.instances) == (8, 1)

    # A value no row measured: the record's own choice for the rest.
    tuned, _ = apply_tuning(model_dir, make_settings(folder, backend="onnx", max_batch_size=16))
    assert (tuned.max_batch_size, tuned.instances) == (16, 2)

    # The latency rule holds within the matching rows too: batch 8 on one instance is too slow alone.
    slow_alone = [row(8, 1, 90, 20), row(8, 2, 70, 10)]
    write_record(folder, TuningRecord(machine_key(settings), chosen, slow_alone, latency_slack=0.25))
    tuned, _ = apply_tuning(model_dir, make_settings(folder, backend="onnx", max_batch_size=8))
    assert tuned.instances == 2


def test_a_record_from_another_machine_is_not_applied(folder: Path) -> None:
    settings = make_settings(folder, backend="onnx")
    write_record(folder, TuningRecord(KEY, {"max_batch_size": 2}))
    tuned, tuning = apply_tuning(read_model_dir(folder), settings)
    assert tuned is settings and tuning.record is None
    described = tuning.describe(read_model_dir(folder))
    assert (
        described["tuned"] is False
        and described["hint"]
        == f"measure the best batch size and instances here: `mvit tune {folder} --backend onnx`, "
        "or let the server do it as it starts (MVIT_TUNE_AT_START_S)"
    )


def test_a_reduced_precision_measured_slower_than_fp32_is_flagged(folder: Path) -> None:
    settings = make_settings(folder, backend="onnx", onnx_precision="int8")
    int8_key = machine_key(settings)
    fp32_key = replace(int8_key, precision="fp32")
    write_record(folder, TuningRecord(int8_key, {"max_batch_size": 1}, [{"images_per_s": 30.0}]))
    _, tuning = apply_tuning(read_model_dir(folder), settings)
    assert tuning.warning is None  # nothing to compare with yet
    write_record(folder, TuningRecord(fp32_key, {"max_batch_size": 1}, [{"images_per_s": 40.0}]))
    _, tuning = apply_tuning(read_model_dir(folder), settings)
    assert tuning.warning == (
        "int8 was measured slower than fp32 on this machine (30.0 against 40.0 img/s, `mvit tune`): serve fp32 here"
    )
    assert tuning.describe(read_model_dir(folder))["warning"] == tuning.warning
    write_record(folder, TuningRecord(int8_key, {"max_batch_size": 1}, [{"images_per_s": 60.0}]))
    assert apply_tuning(read_model_dir(folder), settings)[1].warning is None


def test_a_record_measured_on_another_file_is_not_applied(folder: Path) -> None:
    """Re-exporting or re-quantizing a model makes its record for this machine a measurement of the old file."""
    settings = make_settings(folder, backend="torch")
    model_dir = read_model_dir(folder)
    measured_here = served_file_sha256(model_dir, settings)
    assert measured_here and model_dir.weights is not None
    write_record(
        folder, TuningRecord(machine_key(settings), {"max_batch_size": 2}, artifact_sha256=measured_here)
    )
    tuned, tuning = apply_tuning(model_dir, settings)
    assert tuned.max_batch_size == 2 and tuning.record is not None

    model_dir.weights.write_bytes(model_dir.weights.read_bytes() + b" ")  # another file now
    tuned, tuning = apply_tuning(model_dir, settings)
    assert tuned is settings and tuning.record is None
    assert tuning.describe(model_dir)["hint"] == (
        f"this machine's tuning record was measured on another {model_dir.weights.name}; "
        f"measure the best batch size and instances here: `mvit tune {folder} --backend torch`, "
        "or let the server do it as it starts (MVIT_TUNE_AT_START_S)"
    )

    # Records written before the file was recorded still apply.
    write_record(folder, TuningRecord(machine_key(settings), {"max_batch_size": 2}))
    assert apply_tuning(model_dir, settings)[0].max_batch_size == 2


def test_records_name_the_device_they_were_measured_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from app.backends import device_label

    folder = tmp_path / "model"
    assert device_label(make_settings(folder)) == "cpu"
    assert device_label(make_settings(folder, backend="openvino", device="gpu.1")) == "gpu.1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Some GPU #{index}")
    gpu = make_settings(folder, backend="torch", device="cuda:1")
    assert device_label(gpu) == "cuda:1 Some GPU #1"
    assert (
        machine_key(gpu).describe().endswith("torch fp32 on cuda:1 Some GPU #1, " + machine_key(gpu).runtime)
    )
    # A record from the GPU is not this machine's CPU record, and a record written before devices were
    # recorded was measured on the CPU.
    write_record(tmp_path, TuningRecord(machine_key(gpu), {"max_batch_size": 32}))
    cpu_key = replace(machine_key(gpu), device="cpu")
    assert find_record(tmp_path, cpu_key) is None
    data = {"records": [{"key": {k: v for k, v in asdict(KEY).items() if k != "device"}, "chosen": {}}]}
    (tmp_path / TUNING_FILE).write_text(json.dumps(data))
    assert read_records(tmp_path)[0].key == KEY and KEY.device == "cpu"


def service_record(folder: Path, workers: int, **settings: object) -> TuningRecord:
    options = make_settings(folder, **settings)
    sha = served_file_sha256(read_model_dir(folder), options)
    return TuningRecord(service_key(options), {"workers": workers}, artifact_sha256=sha)


def test_workers_auto_without_a_measurement_is_one_per_4_cpus(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for cpus, expected in ((2, 1), (7, 1), (16, 4), (64, 16)):
        monkeypatch.setattr(apply_tuning_module, "available_cpus", lambda cpus=cpus: cpus)
        count, why = auto_workers(make_settings(folder, workers="auto"))
        assert count == expected
        assert f"{cpus} usable CPUs, one worker per 4; not measured for {folder}" in why


def test_workers_auto_takes_the_count_mvit_tune_measured_for_every_served_model(
    folder: Path, tmp_path: Path
) -> None:
    other = shutil.copytree(folder, tmp_path / "other")
    write_record(folder, service_record(folder, 3))
    settings = make_settings(folder, workers="auto", models=[str(folder), str(other)])
    assert auto_workers(settings)[0] == 1  # the other model was never measured: the CPU rule
    write_record(other, service_record(other, 2))
    assert auto_workers(settings) == (2, "measured best on this machine by `mvit tune --workers`")

    # Measured for another backend, or on another file: not this configuration's.
    assert auto_workers(make_settings(folder, workers="auto", backend="onnx"))[0] == 1
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes() + b" ")
    assert auto_workers(make_settings(folder, workers="auto"))[0] == 1


def test_a_worker_count_record_is_not_a_backend_record(folder: Path) -> None:
    write_record(folder, service_record(folder, 2))
    tuned, tuning = apply_tuning(read_model_dir(folder), make_settings(folder))
    assert tuning.record is None and tuned.max_batch_size == make_settings(folder).max_batch_size
    [record] = read_records(folder)
    assert record.key.scope == "service" and record.key.describe().endswith(", the service over HTTP")

    # Kept apart in the file, so that a version which knows only "records" still reads it.
    backend = TuningRecord(machine_key(make_settings(folder)), {"max_batch_size": 4})
    write_record(folder, backend)
    content = json.loads((folder / TUNING_FILE).read_text())
    assert [r["chosen"] for r in content["records"]] == [{"max_batch_size": 4}]
    assert [r["chosen"] for r in content["service_records"]] == [{"workers": 2}]
    assert all(set(r["key"]) == set(asdict(KEY)) - {"scope"} for r in content["records"])
    assert read_records(folder) == [backend, record]


def test_the_worker_count_chosen_is_the_fewest_within_the_noise_of_the_best() -> None:
    def rows(*throughputs: float) -> list[dict[str, object]]:
        return [{"workers": 2**i, "relative": t / throughputs[0]} for i, t in enumerate(throughputs)]

    assert choose_workers(rows(100, 102, 90)) == 1  # 2 workers within 3 %: not worth a second copy
    assert choose_workers(rows(100, 151, 155)) == 2
    assert choose_workers(rows(100, 150, 160)) == 4


def test_the_servers_measured_get_the_options_given_to_mvit_tune(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVIT_API_TOKENS", "secret")
    monkeypatch.setenv("MVIT_TUNE_AT_START_S", "30")
    settings = make_settings(
        folder, backend="onnx", inference_threads=4, onnx_allow_spinning=False, api_tokens_file="/run/tokens"
    )
    environment = server_environment(settings, concurrency=128)
    assert environment["MVIT_BACKEND"] == "onnx" and environment["MVIT_INFERENCE_THREADS"] == "4"
    assert environment["MVIT_ONNX_ALLOW_SPINNING"] == "false"
    assert not {"MVIT_MODELS", "MVIT_PORT", "MVIT_WORKERS", "MVIT_API_TOKENS", "MVIT_API_TOKENS_FILE"} & (
        environment.keys()
    )  # the load generator sends no token
    assert environment["MVIT_TUNE_AT_START_S"] == "0"  # measured, not tuning at start
    assert environment["MVIT_MAX_QUEUE_SIZE"] == "128"  # every connection's request fits: no 429
    assert server_environment(settings, concurrency=8)["MVIT_MAX_QUEUE_SIZE"] == "64"


def test_mvit_tune_workers_auto_tries_1_2_4_up_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import cpus as cpus_module
    from app.cli import build_parser

    for cpus, expected in (
        (1, [1]),
        (2, [1, 2]),
        (3, [1, 2, 3]),
        (12, [1, 2, 4, 8, 12]),
        (16, [1, 2, 4, 8, 16]),
    ):
        monkeypatch.setattr(cpus_module, "available_cpus", lambda cpus=cpus: cpus)
        assert build_parser().parse_args(["tune", "m", "--workers", "auto"]).worker_counts == expected
    assert build_parser().parse_args(["tune", "m", "--workers", "4,1"]).worker_counts == [4, 1]
