"""The network for a model folder, from its ARCHITECTURES row, with weights loaded safely and strictly."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from app.errors import CheckpointError
from app.nn.configs import ARCHITECTURES, Architecture, MobileViTV2Config


class ModelFolder(Protocol):
    """What building a network needs of a model folder (`app.repository.ModelDir`)."""

    architecture: str
    config: dict[str, Any]
    labels: list[str]

    def require_weights(self) -> Path: ...


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without ever unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
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


def create_network(architecture: Architecture, config: Mapping[str, Any], num_labels: int) -> nn.Module:
    """An untrained network of `architecture` as `config` (config.json's fields) describes it."""
    module_name, class_name = architecture.network.split(":")
    network_class = getattr(importlib.import_module(f"app.nn.{module_name}"), class_name)
    backbone = MobileViTV2Config.from_dict(dict(config))
    if architecture.head_config is not None:
        return network_class(backbone, architecture.head_config.from_dict(dict(config)), num_labels)
    return network_class(backbone, num_labels)


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse weights whose keys or shapes do not match `module`, naming the first few culprits."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{kind}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise CheckpointError(f"{what}: {details}")


def build_network(model_dir: ModelFolder) -> nn.Module:
    """The nn.Module for a model folder, with its weights loaded strictly, in eval mode."""
    architecture = ARCHITECTURES[model_dir.architecture]
    module = create_network(architecture, model_dir.config, len(model_dir.labels))
    weights = model_dir.require_weights()
    state = load_state_dict(weights)
    width = MobileViTV2Config.from_dict(model_dir.config).width_multiplier
    check_state_dict(
        module, state, f"{weights} does not match a MobileViTv2 width {width} {architecture.task} model"
    )
    module.load_state_dict(state, strict=True)
    return module.eval()
