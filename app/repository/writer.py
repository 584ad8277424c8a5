"""Writes model folders (demo models, converted checkpoints) in the format `model_dir` reads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.nn.configs import MobileViTV2Config
from app.repository.model_dir import MANIFEST_FILE


def hf_config(width: float, image_size: int, labels: list[str], architecture: str) -> dict[str, Any]:
    """A config.json that both this project and `transformers.MobileViTV2Config` read."""
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(MobileViTV2Config(width)).items()}
    return {
        "architectures": [architecture],
        "model_type": "mobilevitv2",
        **arch,
        "image_size": image_size,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "torch_dtype": "float32",
    }


def write_model_folder(
    path: Path,
    config: Mapping[str, Any],
    preprocessor_config: Mapping[str, Any],
    manifest: Mapping[str, Any],
    state: Mapping[str, Any],
) -> Path:
    """config.json, preprocessor_config.json, manifest.json and model.safetensors (torch tensors)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    files = {"config.json": config, "preprocessor_config.json": preprocessor_config, MANIFEST_FILE: manifest}
    for filename, content in files.items():
        (path / filename).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    weights = path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors writes 0600; a container user must read it
    return path
