"""Inference backends: the Backend protocol, and the loader that picks one for a model folder.

A new backend is a module here with a `load(model_dir, settings)` function and a row in BACKENDS.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from app.config import Settings
from app.errors import CheckpointError
from app.repository import ModelDir


class Backend(Protocol):
    name: str
    artifact: str  # the file it runs: model.safetensors, model.onnx, ...
    instances: int  # how many `infer_on_instance` calls may run at once

    @property
    def device_type(self) -> str: ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch on all the inference threads."""

    def infer_on_instance(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch on one instance's share of the threads, beside `instances - 1` others."""


# backend name -> (module under app.backends, the extra that installs what it needs)
BACKENDS = {"torch": ("torch_backend", "torch"), "onnx": ("onnx_backend", "onnx")}


def load_backend(model_dir: ModelDir, settings: Settings) -> Backend:
    """The configured backend for a model folder. Its packages are imported only now, so an install
    without torch serves ONNX models."""
    module_name, extra = BACKENDS[settings.backend]
    try:
        module = importlib.import_module(f"app.backends.{module_name}")
    except ImportError as exc:
        raise CheckpointError(
            f"the {settings.backend} backend needs {exc.name or 'a missing package'}, which is not installed: "
            f"`pip install .[{extra}]`, or choose the other backend (--backend / MVIT_BACKEND)"
        ) from None
    backend: Backend = module.load(model_dir, settings)
    return backend
