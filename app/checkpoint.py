"""Find a model folder (local path or Hugging Face Hub id) and read what describes it. No torch here.

A model folder holds a Hugging Face-format checkpoint:

    config.json               architecture, id2label
    preprocessor_config.json  resize / crop / rescale / channel order
    model.safetensors         weights (preferred), or pytorch_model.bin (loaded with weights_only=True)
    model.onnx                optional ONNX export (`mvit export`); model.int8.onnx, its INT8 version
    manifest.json             optional, written by this project: task, random_weights, provenance

A folder for the ONNX backend alone (an edge box) may carry the ONNX files without the PyTorch weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
MANIFEST_FILE = "manifest.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

TASK_BY_ARCHITECTURE = {
    "MobileViTV2ForImageClassification": "image-classification",
    "MobileViTV2ForSemanticSegmentation": "image-segmentation",
    "MobileViTV2SSD": "object-detection",  # this project's own (no transformers port exists)
}


def config_fields(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The values of dataclass `cls`'s fields found in a config.json dict; JSON lists become tuples."""

    def frozen(value: Any) -> Any:
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    return {f.name: frozen(config[f.name]) for f in fields(cls) if f.name in config}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointError(Exception):
    """A model folder that is missing, incomplete or not a MobileViTv2 checkpoint."""


@dataclass(frozen=True)
class ModelDir:
    path: Path
    model_id: str
    source: str
    config: dict[str, Any]
    preprocessor_config: dict[str, Any]
    weights: Path | None  # None: an ONNX-only folder
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        if "task" in self.manifest:
            return str(self.manifest["task"])
        for architecture in self.config.get("architectures") or []:
            if architecture in TASK_BY_ARCHITECTURE:
                return TASK_BY_ARCHITECTURE[architecture]
        raise CheckpointError(
            f"{self.path}: config.json names no supported architecture "
            f"({', '.join(TASK_BY_ARCHITECTURE)}); got {self.config.get('architectures')!r}"
        )

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("random_weights", False))

    @property
    def labels(self) -> list[str]:
        id2label = self.config.get("id2label")
        if not id2label:
            raise CheckpointError(f"{self.path}: config.json has no id2label")
        try:
            by_index = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path}: config.json id2label has a non-integer key ({exc})"
            ) from None
        if sorted(by_index) != list(range(len(by_index))):
            raise CheckpointError(f"{self.path}: config.json id2label keys are not 0..{len(by_index) - 1}")
        return [by_index[i] for i in range(len(by_index))]

    def require_weights(self) -> Path:
        if self.weights is None:
            raise CheckpointError(
                f"{self.path} has no PyTorch weights ({', '.join(WEIGHT_FILES)}), only ONNX exports: "
                "serve it with --backend onnx, or fetch the full checkpoint"
            )
        return self.weights

    def onnx_file(self, precision: str = "fp32") -> Path:
        return self.path / ONNX_FILES[precision]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_model_dir(path: Path, source: str | None = None, model_id: str | None = None) -> ModelDir:
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None and not any((path / name).is_file() for name in ONNX_FILES.values()):
        raise CheckpointError(
            f"{path} has no weights: expected one of {', '.join((*WEIGHT_FILES, *ONNX_FILES.values()))}"
        )
    manifest = _read_json(path / MANIFEST_FILE) if (path / MANIFEST_FILE).is_file() else {}
    return ModelDir(
        path=path,
        model_id=model_id or str(manifest.get("id") or path.name),
        source=source or str(path),
        config=_read_json(path / "config.json"),
        preprocessor_config=_read_json(path / "preprocessor_config.json"),
        weights=weights,
        manifest=manifest,
    )


def hub_folder(repository: Path, repo_id: str) -> Path:
    return repository / "hub" / repo_id.replace("/", "--")


@contextlib.contextmanager
def partial_folder(target: Path) -> Iterator[Path]:
    """A hidden, empty folder beside `target` for a download in progress, removed however the block ends.

    Whatever should survive is moved out of it with `move_into_place`, so an interrupted or refused
    download never leaves a half model where the server would find it.
    """
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def move_into_place(folder: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    folder.rename(target)


def download_from_hub(
    repo_id: str,
    repository: Path,
    revision: str | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download a Hub checkpoint into the model repository (`models/hub/<org>--<name>`), atomically.

    Files land in a hidden partial folder first; only a complete download (config, preprocessing,
    weights, and `verify` passing when given) is renamed into place, so an interrupted fetch never
    leaves a half model where the server would find it.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise CheckpointError(
            f"cannot download {repo_id!r}: huggingface_hub is not installed (an ONNX-only install). "
            "Fetch and export models with the full install (`pip install .[export]`, `mvit fetch`, "
            "`mvit export`), then serve the model folder"
        ) from None

    target = hub_folder(repository, repo_id)
    try:
        with partial_folder(target) as partial:
            _download_hub_files(repo_id, revision, partial)
            if verify is not None:
                verify(partial)
            move_into_place(partial, target)
    except CheckpointError:
        raise
    except Exception as exc:  # network, auth, missing repo: one clear line for the operator
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {reason}). "
            "Check the network and the model id, or serve a local folder "
            "(`mvit demo-models models/` writes offline demo models)"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # an empty hub/ left by a failed first download
            target.parent.rmdir()
    return target


def _download_hub_files(repo_id: str, revision: str | None, folder: Path) -> None:
    """config.json, preprocessor_config.json and the first of WEIGHT_FILES the repository has."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> None:
        hf_hub_download(repo_id, filename, revision=revision, local_dir=folder)

    fetch("config.json")
    fetch("preprocessor_config.json")
    for name in WEIGHT_FILES:
        try:
            fetch(name)
            break
        except EntryNotFoundError:
            continue
    else:
        raise CheckpointError(f"{repo_id} on the Hub has none of {', '.join(WEIGHT_FILES)}")
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping


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
