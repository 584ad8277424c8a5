"""`tuning.json` in a model folder: the serving configuration `mvit tune` measured best, per machine.

The best batch size, instance count and spin policy depend on the CPU, its core count and the runtime's
version, so each record is keyed by all of them, and the server applies only a record whose key matches
the machine it runs on (docs/performance.md, "mvit tune").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CheckpointError

TUNING_FILE = "tuning.json"
# The settings a record may choose; whatever the operator sets explicitly wins over it.
TUNED_SETTINGS = ("max_batch_size", "instances", "onnx_allow_spinning", "workers")
BATCH_SIZES = (1, 2, 4, 8)  # tried unless `mvit tune --batch-sizes` says otherwise


@dataclass(frozen=True)
class MachineKey:
    """What a measurement holds for: the same model on another CPU or runtime needs its own."""

    cpu: str  # lscpu's model name
    threads: int  # inference threads (default: the CPUs this process may use)
    backend: str
    precision: str
    runtime: str  # e.g. "onnxruntime 1.23.2"
    # Where the model runs: "cpu", or an accelerator and its name ("cuda:0 NVIDIA H200"). Records written
    # before it was recorded were all measured on the CPU.
    device: str = "cpu"
    # What was measured: "backend", the backend alone on preprocessed batches (batch size, instances,
    # spinning); "service", whole servers over HTTP on loopback (`mvit tune --workers`: the worker count,
    # `threads` then being the server's, divided among its workers).
    scope: str = "backend"

    def describe(self) -> str:
        on = "" if self.device == "cpu" else f" on {self.device}"
        over = ", the service over HTTP" if self.scope == "service" else ""
        return (
            f"{self.cpu}, {self.threads} threads, {self.backend} {self.precision}{on}, {self.runtime}{over}"
        )


@dataclass(frozen=True)
class TuningRecord:
    key: MachineKey
    chosen: dict[str, Any]  # settings from TUNED_SETTINGS
    measured: list[dict[str, Any]] = field(default_factory=list)  # one row per configuration tried
    tuned_at: str = ""
    command: str = ""
    # The file measured (model.onnx, model.int8.onnx or the weights): a record applies to that file only.
    # Empty in records written before it was recorded.
    artifact_sha256: str = ""
    # The choice's rule (app/runtime/apply_tuning.py, `best_row`), kept so that a server whose operator fixes
    # some settings can choose the rest from `measured` the same way. Older records used the default.
    latency_slack: float = 0.25

    @classmethod
    def from_dict(cls, data: dict[str, Any], scope: str = "backend") -> TuningRecord:
        chosen = {k: v for k, v in data["chosen"].items() if k in TUNED_SETTINGS}
        return cls(
            MachineKey(**{**data["key"], "scope": scope}),
            chosen,
            list(data.get("measured", [])),
            str(data.get("tuned_at", "")),
            str(data.get("command", "")),
            str(data.get("artifact_sha256", "")),
            float(data.get("latency_slack", 0.25)),
        )


# Where each scope's records are kept in the file. The key's scope is the list's, not a field of its own:
# a version that knows only "records" then still reads the file (an image rolled back, say).
SCOPE_LISTS = {"backend": "records", "service": "service_records"}


def read_records(folder: Path) -> list[TuningRecord]:
    path = folder / TUNING_FILE
    if not path.is_file():
        return []
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return [
            TuningRecord.from_dict(data, scope)
            for scope, name in SCOPE_LISTS.items()
            for data in content.get(name, [])
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is not a tuning file `mvit tune` wrote ({type(exc).__name__}: {exc}); "
            "delete it or run `mvit tune` again"
        ) from None


def stored(record: TuningRecord) -> dict[str, Any]:
    data = asdict(record)
    del data["key"]["scope"]
    return data


def find_record(folder: Path, key: MachineKey) -> TuningRecord | None:
    return next((r for r in read_records(folder) if r.key == key), None)


def write_record(folder: Path, record: TuningRecord) -> Path:
    """Add `record` to the folder's tuning file, replacing one for the same machine."""
    records = [r for r in read_records(folder) if r.key != record.key] + [record]
    path = folder / TUNING_FILE
    temporary = path.with_suffix(".json.partial")
    content = {
        name: [stored(r) for r in records if r.key.scope == scope] for scope, name in SCOPE_LISTS.items()
    }
    temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path
