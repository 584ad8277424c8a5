"""`--model` / models.yaml names -> a model folder: a path, a folder in the repository, or a fetched Hub id.

Resolving never downloads: `mvit fetch` (and `mvit serve`, `predict` and `export` before they start) put
Hub checkpoints into the repository, pinned and verified (app/tools/fetch.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from app.errors import CheckpointError
from app.repository.hub import fetch_from_hub, hub_folder
from app.repository.model_dir import ONNX_FILES, WEIGHT_FILES, ModelDir, read_model_dir

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def local_folder(source: str, repository: Path) -> Path | None:
    """The folder `source` names here (a path, a repository folder, a fetched Hub id), or None."""
    for candidate in (Path(source).expanduser(), repository / source):
        if candidate.is_dir():
            return candidate
    if HUB_ID.match(source):
        cached = hub_folder(repository, source)
        if cached.is_dir() and any(
            (cached / name).is_file() for name in (*WEIGHT_FILES, *ONNX_FILES.values())
        ):
            return cached
    return None


def resolve(source: str, repository: Path) -> ModelDir:
    """A local folder, a folder name inside the model repository, or a Hub id fetched into it."""
    folder = local_folder(source, repository)
    if folder is not None:
        if HUB_ID.match(source) and folder == hub_folder(repository, source):
            return read_model_dir(folder, source, model_id=source)
        return read_model_dir(folder, source)
    if HUB_ID.match(source):
        raise CheckpointError(
            f"{source} is not in the model repository {repository}: fetch it with `mvit fetch {source}`"
        )
    raise CheckpointError(f"{source!r} is neither a model folder nor a Hugging Face Hub id (org/name)")


def ensure_available(
    source: str, repository: Path, revision: str | None = None, verify: Callable[[Path], None] | None = None
) -> None:
    """Fetch `source` into the repository (pinned, `verify`d) when it is a Hub id not there yet."""
    if local_folder(source, repository) is None and HUB_ID.match(source):
        log.info("%s is not in %s yet: fetching it", source, repository)
        fetch_from_hub(source, repository, revision, verify)
