"""What to serve: `--model` flags / MVIT_MODELS, else the repository's `models.yaml`, else the default model.

    # models/models.yaml
    models:
      - name: hub/apple--mobilevitv2-1.0-imagenet1k-256   # a folder in the repository, a path, or a Hub id
        backend: onnx          # optional, per model: torch | onnx (default: --backend)
        onnx_precision: fp32   # optional: fp32 | int8
        device: cpu            # optional
        max_batch_size: 8      # optional
        max_queue_delay_ms: 0  # optional
        max_queue_size: 64     # optional
        instances: 0           # optional: concurrent batches (0 = auto)

Unknown keys, wrong types and duplicate names are refused at start with the file, the entry and the
field, in the spirit of Triton's model repository (one folder per model, one file saying how to run it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.checkpoint import CheckpointError
from app.config import DEFAULT_MODEL, Settings

REPOSITORY_FILE = "models.yaml"


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="A folder in the repository, a path, or a Hub id.")
    backend: Literal["torch", "onnx"] | None = None
    onnx_precision: Literal["fp32", "int8"] | None = None
    device: str | None = None
    max_batch_size: int | None = Field(None, ge=1)
    max_queue_delay_ms: float | None = Field(None, ge=0)
    max_queue_size: int | None = Field(None, ge=1)
    instances: int | None = Field(None, ge=0)

    def settings(self, defaults: Settings) -> Settings:
        """The server settings with this entry's overrides."""
        overrides = self.model_dump(exclude={"name"}, exclude_none=True)
        return defaults.model_copy(update=overrides) if overrides else defaults


class RepositoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique(cls, entries: list[ModelEntry]) -> list[ModelEntry]:
        names = [entry.name for entry in entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {', '.join(duplicates)}")
        return entries


def read_repository_file(path: Path) -> list[ModelEntry]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot be read as YAML ({exc})".replace("\n", " ")) from None
    try:
        return RepositoryFile.model_validate(data if data is not None else {}).models
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors()
        )
        raise CheckpointError(f"{path}: {problems}") from None


def served_models(settings: Settings) -> list[ModelEntry]:
    if settings.models:
        return [ModelEntry(name=name) for name in settings.models]
    path = settings.model_repository / REPOSITORY_FILE
    if path.is_file():
        return read_repository_file(path)
    return [ModelEntry(name=DEFAULT_MODEL)]


def add_to_repository_file(path: Path, names: list[str]) -> list[str]:
    """Add entries for `names` that `path` does not list yet (creating it); returns the names added."""
    import yaml

    entries: list[dict[str, Any]] = []
    if path.is_file():
        entries = [e.model_dump(exclude_none=True) for e in read_repository_file(path)]
    known = {entry["name"] for entry in entries}
    added = [name for name in names if name not in known]
    if added or not path.is_file():
        entries += [{"name": name} for name in added]
        header = "# What `mvit serve` serves (see models/README.md). Written by `mvit fetch`; edit freely.\n"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(header + yaml.safe_dump({"models": entries}, sort_keys=False), encoding="utf-8")
        tmp.replace(path)
    return added
