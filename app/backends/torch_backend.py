"""PyTorch backend: builds the network for a model folder and runs batches of preprocessed arrays."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.checkpoint import CheckpointError, ModelDir
from app.nn.mobilevitv2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from app.nn.ssd import MobileViTV2SSD
from app.tasks.detection import SSDConfig


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without ever unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} cannot be loaded safely (torch.load with weights_only=True refused it: {exc}). "
            "This service never unpickles arbitrary objects; convert the checkpoint to safetensors."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


def build_network(model_dir: ModelDir) -> nn.Module:
    """The nn.Module for a model folder, with its weights loaded strictly, in eval mode."""
    cfg = MobileViTV2Config.from_dict(model_dir.config)
    task = model_dir.task
    if task == "image-classification":
        module: nn.Module = MobileViTV2ForImageClassification(cfg, num_labels=len(model_dir.labels))
    elif task == "image-segmentation":
        module = MobileViTV2ForSemanticSegmentation(cfg, num_labels=len(model_dir.labels))
    elif task == "object-detection":
        module = MobileViTV2SSD(cfg, SSDConfig.from_dict(model_dir.config), num_classes=len(model_dir.labels))
    else:
        raise CheckpointError(f"{model_dir.path}: task {task!r} is not supported by the PyTorch backend yet")
    weights = model_dir.require_weights()
    state = load_state_dict(weights)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise CheckpointError(
            f"{weights} does not match a MobileViTv2 width {cfg.width_multiplier} {task} model: {details}"
        )
    module.load_state_dict(state, strict=True)
    return module.eval()


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
