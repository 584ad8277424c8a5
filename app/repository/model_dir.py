"""The model folder format, and reading what describes a folder. No torch here.

A model folder holds a Hugging Face-format checkpoint:

    config.json               architecture, id2label
    preprocessor_config.json  resize / crop / rescale / channel order
    model.safetensors         weights (preferred), or pytorch_model.bin (loaded with weights_only=True)
    model.onnx                optional ONNX export (`mvit export`); model.int8.onnx, its INT8 version
    manifest.json             optional, written by this project: task, random_weights, provenance
                              (source, training_pipeline)

A folder for the ONNX backend alone (an edge box) may carry the ONNX files without the PyTorch weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CheckpointError
from app.nn.configs import ARCHITECTURE_BY_TASK, ARCHITECTURES

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
MANIFEST_FILE = "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    def architecture(self) -> str:
        """The first of config.json's `architectures` in ARCHITECTURES (or the manifest task's)."""
        for architecture in self.config.get("architectures") or []:
            if architecture in ARCHITECTURES:
                return str(architecture)
        if self.manifest.get("task") in ARCHITECTURE_BY_TASK:
            return ARCHITECTURE_BY_TASK[self.manifest["task"]].name
        raise CheckpointError(
            f"{self.path}: config.json names no supported architecture "
            f"({', '.join(ARCHITECTURES)}); got {self.config.get('architectures')!r}"
        )

    @property
    def task(self) -> str:
        if "task" in self.manifest:
            return str(self.manifest["task"])
        return ARCHITECTURES[self.architecture].task

    @property
    def training_pipeline(self) -> str | None:
        """What the weights were trained with ("ml-cvnets" for Apple's), as the manifest records it;
        folders converted from cvnets before the manifest said so count as ml-cvnets too."""
        if "training_pipeline" in self.manifest:
            return str(self.manifest["training_pipeline"])
        return "ml-cvnets" if self.manifest.get("source_format") == "cvnets" else None

    @property
    def recorded_profile(self) -> str | None:
        """The preprocessing profile the manifest names for this folder, if any (docs/preprocessing.md)."""
        profile = self.manifest.get("preprocessing_profile")
        return str(profile) if profile else None

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
