"""PyTorch backend: runs batches of preprocessed arrays through a model folder's network."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.config import Settings
from app.errors import CheckpointError
from app.nn.build import build_network
from app.repository import ModelDir, read_model_dir


class TorchBackend:
    """Runs an nn.Module on float32 NCHW batches; returns named NumPy outputs."""

    name = "torch"
    instances = 1  # torch's intra-op thread count is per process: concurrent calls would oversubscribe

    def __init__(self, module: nn.Module, device: str = "cpu", artifact: str = "") -> None:
        self.artifact = artifact
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    @property
    def device_type(self) -> str:
        return self.device.type

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.module(torch.from_numpy(batch).to(self.device))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        names = getattr(self.module, "output_names", ("logits",))
        return {name: out.float().cpu().numpy() for name, out in zip(names, outputs, strict=True)}

    infer_on_instance = infer


def set_threads(threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(RuntimeError):  # can only be set once per process
        torch.set_num_interop_threads(1)


def load_torch_backend(model_dir: ModelDir, device: str = "cpu") -> TorchBackend:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} requested but CUDA is not available to PyTorch")
    return TorchBackend(build_network(model_dir), device, artifact=model_dir.require_weights().name)


def verify_model_folder(path: Path) -> None:
    """Refuse a folder whose weights do not load strictly into the network its config describes."""
    build_network(read_model_dir(path))


def load(model_dir: ModelDir, settings: Settings) -> TorchBackend:
    set_threads(settings.inference_threads)
    return load_torch_backend(model_dir, settings.device)
