"""Apply a model folder's `mvit tune` record for this machine, where the operator left the setting alone;
and choose `--workers auto`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.backends import device_label, runtime_version
from app.config import ModelOptions, ServerSettings
from app.cpus import available_cpus, cpu_model
from app.repository import ModelDir, file_sha256, resolve
from app.repository.models_yaml import served_models
from app.repository.resolve import local_folder
from app.repository.tuning import MachineKey, TuningRecord, find_record

# `--workers auto` where no measurement says otherwise, a rule of thumb: each worker gets 4 CPUs, about one
# for its Python (HTTP, decoding, post-processing, which the GIL holds to one core) and the rest for
# inference. On 2 cores one worker measured as fast as two; no many-core machine has measured it yet.
CPUS_PER_WORKER = 4


@dataclass(frozen=True)
class Tuning:
    """What a model's serving configuration owes to `mvit tune`."""

    key: MachineKey
    record: TuningRecord | None
    applied: dict[str, Any]  # what the record sets: its choice, given the options the operator set
    warning: str | None = None  # a reduced precision measured slower than fp32 here
    outdated: str | None = None  # why this machine's record does not apply: it measured another file
    set_by_operator: dict[str, Any] = field(default_factory=dict)  # the record's options the operator set

    def describe(self, model_dir: ModelDir) -> dict[str, Any]:
        if self.record is None:
            measure = (
                f"measure the best batch size and instances here: `mvit tune {model_dir.path} "
                f"--backend {self.key.backend}`, or let the server do it as it starts (MVIT_TUNE_AT_START_S)"
            )
            return {
                "tuned": False,
                "machine": self.key.describe(),
                "hint": f"{self.outdated}; {measure}" if self.outdated else measure,
            }
        return {
            "tuned": True,
            "machine": self.key.describe(),
            "tuned_at": self.record.tuned_at,
            "tuned_by": self.record.command,
            "chosen": self.record.chosen,
            **({"set_by_operator": self.set_by_operator} if self.set_by_operator else {}),
            "applied": self.applied,
            **({"warning": self.warning} if self.warning else {}),
        }

    def summary(self, model_dir: ModelDir) -> str:
        """For the start-up line."""
        if self.record is None:
            return f"not tuned: {self.describe(model_dir)['hint']}"
        given = f"; set by the operator: {self.set_by_operator}" if self.set_by_operator else ""
        return f"tuned for this machine ({self.applied or 'nothing left to apply'}{given})"


def machine_key(options: ModelOptions) -> MachineKey:
    precision = {
        "torch": options.torch_precision,
        "onnx": options.onnx_precision,
        "openvino": "int8" if options.onnx_precision == "int8" else options.openvino_precision,
    }[options.backend]
    return MachineKey(
        cpu_model(),
        options.inference_threads,
        options.backend,
        precision,
        runtime_version(options.backend),
        device_label(options),
    )


def service_key(options: ModelOptions) -> MachineKey:
    """The key of a `mvit tune --workers` record: whole servers measured over HTTP."""
    return replace(machine_key(options), scope="service")


def auto_workers(settings: ServerSettings) -> tuple[int, str]:
    """`--workers auto`: the count `mvit tune --workers` measured best on this machine for every served
    model (the smallest where they differ: each worker holds them all); else one per CPUS_PER_WORKER
    usable CPUs. Returns the count and why, for the start-up line."""
    counts, unmeasured = [], []
    for entry in served_models(settings):
        record = None
        if local_folder(entry.name, settings.model_repository) is not None:  # one still to fetch has none
            options = entry.options(settings.model_options())
            model_dir = resolve(entry.name, settings.model_repository)
            record, _ = current_record(model_dir, options, service_key(options))
        if record is None or "workers" not in record.chosen:
            unmeasured.append(entry.name)
        else:
            counts.append(int(record.chosen["workers"]))
    if counts and not unmeasured:
        return min(counts), "measured best on this machine by `mvit tune --workers`"
    cpus = available_cpus()
    return max(1, cpus // CPUS_PER_WORKER), (
        f"{cpus} usable CPUs, one worker per {CPUS_PER_WORKER}; not measured for {', '.join(unmeasured)}: "
        "`mvit tune FOLDER --workers 1,2,4` measures it here"
    )


def served_file(model_dir: ModelDir, options: ModelOptions) -> Path | None:
    """The file the configured backend runs: what a tuning record was measured on."""
    return model_dir.weights if options.backend == "torch" else model_dir.onnx_file(options.onnx_precision)


def served_file_sha256(model_dir: ModelDir, options: ModelOptions) -> str:
    path = served_file(model_dir, options)
    return file_sha256(path) if path is not None and path.is_file() else ""


def current_record(
    model_dir: ModelDir, options: ModelOptions, key: MachineKey
) -> tuple[TuningRecord | None, str]:
    """The folder's record for `key`, if it was measured on the file `options` serve; else None, and why
    not when a record exists ("" when none does)."""
    record = find_record(model_dir.path, key)
    if record is None or not record.artifact_sha256:
        return record, ""
    if record.artifact_sha256 == served_file_sha256(model_dir, options):
        return record, ""
    path = served_file(model_dir, options)
    return None, f"this machine's tuning record was measured on another {path.name if path else 'file'}"


def apply_tuning(model_dir: ModelDir, options: ModelOptions) -> tuple[ModelOptions, Tuning]:
    key = machine_key(options)
    record, outdated = current_record(model_dir, options, key)
    if record is None:
        return options, Tuning(key, None, {}, outdated=outdated or None)
    return apply_record(model_dir, options, record)


def best_row(rows: list[dict[str, Any]], latency_slack: float) -> dict[str, Any]:
    """The highest throughput among the rows whose lone latency is within `latency_slack` of the best lone
    latency; ties go to the smaller batch."""
    best_latency = min(row["lone_latency_ms"] for row in rows)
    eligible = [row for row in rows if row["lone_latency_ms"] <= best_latency * (1 + latency_slack)]
    return max(eligible, key=lambda row: (row["images_per_s"], -row["max_batch_size"]))


def choice_given(record: TuningRecord, fixed: dict[str, Any]) -> dict[str, Any]:
    """The record's choice when the operator fixed some of its options: the best of the measured
    configurations that match them, since the best batch size on one instance need not be the best on
    two. Where none was measured, the record's own choice."""
    if not fixed:
        return record.chosen
    rows = [
        row
        for row in record.measured
        if {"images_per_s", "lone_latency_ms", "max_batch_size"} <= row.keys()
        and all(row.get(name) == value for name, value in fixed.items())
    ]
    if not rows:
        return record.chosen
    best = best_row(rows, record.latency_slack)
    return {name: best.get(name, value) for name, value in record.chosen.items()}


def apply_record(
    model_dir: ModelDir, options: ModelOptions, record: TuningRecord
) -> tuple[ModelOptions, Tuning]:
    """`record`'s choices, where the operator left the setting alone, given the ones the operator set."""
    fixed = {name: getattr(options, name) for name in record.chosen if name in options.model_fields_set}
    choice = choice_given(record, fixed)
    applied = {name: value for name, value in choice.items() if name not in fixed}
    tuning = Tuning(
        record.key, record, applied, slower_than_fp32(model_dir, record.key, record), set_by_operator=fixed
    )
    return options.model_copy(update=applied), tuning


def best_throughput(record: TuningRecord) -> float:
    return max((float(row["images_per_s"]) for row in record.measured), default=0.0)


def slower_than_fp32(model_dir: ModelDir, key: MachineKey, record: TuningRecord) -> str | None:
    """When `mvit tune` measured this reduced precision slower than fp32 on this machine, why to switch."""
    if key.precision == "fp32":
        return None
    fp32 = find_record(model_dir.path, replace(key, precision="fp32"))
    if fp32 is None or best_throughput(record) >= best_throughput(fp32):
        return None
    return (
        f"{key.precision} was measured slower than fp32 on this machine ({best_throughput(record):.1f} against "
        f"{best_throughput(fp32):.1f} img/s, `mvit tune`): serve fp32 here"
    )
