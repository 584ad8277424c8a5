"""What to serve: `--model` flags / MVIT_MODELS, else the repository's `models.yaml`, else the default model.

    # models/models.yaml
    models:
      - name: hub/apple--mobilevitv2-1.0-imagenet1k-256   # a folder in the repository, a path, or a Hub id
        backend: onnx                                     # optional: any of config.PER_MODEL_OPTIONS

Unknown keys, wrong types and duplicate names are refused at start with the file, the entry and the
field, in the spirit of Triton's model repository (one folder per model, one file saying how to run it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from app.config import DEFAULT_MODEL, PER_MODEL_OPTIONS, ModelOptions, ServerSettings
from app.errors import CheckpointError, validation_problems

REPOSITORY_FILE = "models.yaml"


def _optional(name: str) -> tuple[Any, Any]:
    """A model option as an optional models.yaml key: same type, limits and description; default None."""
    field = copy.copy(ModelOptions.model_fields[name])
    field.default, field.default_factory = None, None
    return field.annotation | None, field


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="A folder in the repository, a path, or a Hub id.")

    def options(self, defaults: ModelOptions) -> ModelOptions:
        """The server's model options with this entry's overrides."""
        overrides = self.model_dump(exclude={"name"}, exclude_none=True)
        return defaults.model_copy(update=overrides) if overrides else defaults


ModelEntry = create_model(
    "ModelEntry",
    __base__=_Options,
    __doc__="One models.yaml entry: a model, and the options it overrides (config.PER_MODEL_OPTIONS).",
    **{name: _optional(name) for name in PER_MODEL_OPTIONS},
)


class RepositoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)  # type: ignore[valid-type]

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
        problems = validation_problems(exc.errors())
        raise CheckpointError(f"{path}: {problems}") from None


def served_models(settings: ServerSettings) -> list[ModelEntry]:
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
