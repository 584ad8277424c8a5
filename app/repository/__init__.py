"""The model repository: the folder format, models.yaml, Hub downloads and folder writers."""

from app.errors import CheckpointError
from app.repository.model_dir import (
    MANIFEST_FILE,
    ONNX_FILES,
    WEIGHT_FILES,
    ModelDir,
    file_sha256,
    read_model_dir,
)
from app.repository.resolve import resolve

__all__ = [
    "MANIFEST_FILE",
    "ONNX_FILES",
    "WEIGHT_FILES",
    "CheckpointError",
    "ModelDir",
    "file_sha256",
    "read_model_dir",
    "resolve",
]
