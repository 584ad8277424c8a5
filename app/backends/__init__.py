"""Inference backends: the Backend protocol, and the loader that picks one for a model folder.

A new backend is a module here with a `load(model_dir, options)` function and a row in BACKENDS.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.config import ModelOptions
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


@dataclass(frozen=True)
class BackendSpec:
    module: str  # under app.backends
    extra: str  # the pip extra that installs `packages`
    packages: tuple[str, ...]  # what serving with it imports; the first is the runtime


BACKENDS = {
    "torch": BackendSpec("torch_backend", "torch", ("torch", "safetensors")),
    "onnx": BackendSpec("onnx_backend", "onnx", ("onnxruntime",)),
    "openvino": BackendSpec("openvino_backend", "openvino", ("openvino",)),
}


def runtime_version(name: str) -> str:
    """The backend's runtime and its version, e.g. "onnxruntime 1.23.2" (tuning records are keyed by it)."""
    package = BACKENDS[name].packages[0]
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu, or a source build
        module = importlib.import_module(package)
        return f"{package} {getattr(module, '__version__', 'unknown')}"


def device_label(options: ModelOptions) -> str:
    """Where the configured backend runs, as tuning records are keyed: "cpu", or the accelerator with its
    name where the runtime tells it (an H200 and an A10 behind the same `cuda:0` need their own records)."""
    if options.device == "cpu":
        return "cpu"
    if options.backend == "torch" and options.device.startswith("cuda"):
        name = importlib.import_module("app.backends.torch_backend").cuda_device_name(options.device)
        return f"{options.device} {name}" if name else options.device
    return options.device


def require_backend(name: str) -> None:
    """Raise CheckpointError, naming the extra to install, when a package the backend needs is missing."""
    spec = BACKENDS[name]
    for package in spec.packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except ImportError:
            found = False
        if not found:
            raise CheckpointError(
                f"the {name} backend needs {package}, which is not installed: `pip install '.[{spec.extra}]'` "
                f"(or `pip install 'mobilevitv2-serve[{spec.extra}]'`), or choose the other backend "
                "(--backend / MVIT_BACKEND)"
            )


def load_backend(model_dir: ModelDir, options: ModelOptions) -> Backend:
    """The configured backend for a model folder. Its packages are imported only now, so an install
    without torch serves ONNX models."""
    require_backend(options.backend)
    module = importlib.import_module(f"app.backends.{BACKENDS[options.backend].module}")
    backend: Backend = module.load(model_dir, options)
    return backend


def verify_with_torch(folder: Path) -> None:
    """Refuse a fetched folder whose weights do not load strictly (needs torch: fetching is the full install's)."""
    from app.backends.torch_backend import verify_model_folder

    verify_model_folder(folder)
