"""`--model` / models.yaml names -> a model folder: a path, a folder in the repository, or a Hub id."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from app.errors import CheckpointError
from app.repository.hub import download_from_hub, hub_folder
from app.repository.model_dir import WEIGHT_FILES, ModelDir, read_model_dir

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(source: str, repository: Path, revision: str | None = None) -> ModelDir:
    """A local folder, a folder name inside the model repository, or a Hub id (downloaded once)."""
    for candidate in (Path(source).expanduser(), repository / source):
        if candidate.is_dir():
            return read_model_dir(candidate, source)
    if _HUB_ID.match(source):
        cached = hub_folder(repository, source)
        if cached.is_dir() and any((cached / name).is_file() for name in WEIGHT_FILES):
            return read_model_dir(cached, source, model_id=source)
        log.info("downloading %s from the Hugging Face Hub into %s", source, cached)
        return read_model_dir(download_from_hub(source, repository, revision), source, model_id=source)
    raise CheckpointError(f"{source!r} is neither a model folder nor a Hugging Face Hub id (org/name)")
