"""A model folder's network to ONNX (`model.onnx`), checked against PyTorch before it is written.

Needs torch and onnx (`pip install .[export]`); serving the result needs neither (app/backends/onnx_backend.py).

The graph has one input, `pixel_values` (N x 3 x H x W float32, preprocessed), a dynamic batch dimension,
and the network's named outputs (`logits`, plus `box_regression` for detection). Its metadata carries what a
consumer needs without the model folder: task, labels, preprocessing, the config, and the source weights'
SHA-256, so the server can tell when an export no longer matches its weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.backends.parity import parity_problems
from app.errors import CheckpointError
from app.intake.preprocess import Preprocessing
from app.repository import ModelDir, file_sha256

INPUT_NAME = "pixel_values"
# Opset 17 is read by every current runtime (ONNX Runtime >= 1.13, TensorRT 8.5+, OpenVINO 2022.3+). The
# network needs nothing newer: patch folding is reshape/transpose, not col2im (opset 18). PyTorch's
# torch.export-based exporter only writes opset >= 18, so 17 goes through the TorchScript exporter.
DEFAULT_OPSET = 17
METADATA_PREFIX = "mvit."


def onnx_metadata(model_dir: ModelDir, output_names: list[str], opset: int) -> dict[str, str]:
    import torch

    from app import __version__

    weights = model_dir.require_weights()
    return {
        f"{METADATA_PREFIX}{key}": value
        for key, value in {
            "task": model_dir.task,
            "labels": json.dumps(model_dir.labels),
            "preprocessing": json.dumps(model_dir.preprocessor_config),
            "config": json.dumps(model_dir.config),
            "manifest": json.dumps(model_dir.manifest),
            "source": model_dir.source,
            "source_weights": weights.name,
            "source_sha256": file_sha256(weights),
            "input_name": INPUT_NAME,
            "output_names": json.dumps(output_names),
            "opset": str(opset),
            "exported_by": f"mobilevitv2-serve {__version__}, torch {torch.__version__}",
        }.items()
    }


def _staged_group_norm_class() -> type:
    import torch
    from torch import nn

    class StagedGroupNorm(nn.Module):
        """GroupNorm with one group over (C, H, W), written so ONNX Runtime reduces accurately.

        Exported as-is, nn.GroupNorm(1, C) becomes InstanceNormalization over the flattened C*H*W, whose
        CPU kernel sums the whole map in one float32 pass, far less accurately than PyTorch's pairwise
        sums (docs/performance.md). Means taken one axis at a time (equal-sized groups, so the mean of
        means is the mean) keep ONNX Runtime as close to float64 as PyTorch.
        """

        def __init__(self, norm: nn.GroupNorm) -> None:
            super().__init__()
            self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

        @staticmethod
        def _mean(x: torch.Tensor) -> torch.Tensor:
            return x.mean(3, keepdim=True).mean(2, keepdim=True).mean(1, keepdim=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centered = x - self._mean(x)
            scale = torch.rsqrt(self._mean(centered * centered) + self.eps)
            return centered * scale * self.weight[:, None, None] + self.bias[:, None, None]

    return StagedGroupNorm


def _for_export(net: Any) -> Any:
    """A copy of `net` with every single-group GroupNorm replaced by StagedGroupNorm (same weights)."""
    import copy

    from torch import nn

    staged = _staged_group_norm_class()
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.GroupNorm) and child.num_groups == 1 and child.weight is not None:
                setattr(module, name, staged(child))
    return net


def temporary_path(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.stem}.{tag}.{os.getpid()}.tmp.onnx")


@contextlib.contextmanager
def replacing(target: Path, tag: str) -> Iterator[Path]:
    """A temporary path next to `target` that replaces it atomically on success, and is removed on failure."""
    tmp = temporary_path(target, tag)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "mobilevitv2-serve"
    model.doc_string = f"MobileViTv2 {metadata.get(METADATA_PREFIX + 'task', '')} from {path.parent.name}"
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _check_parity(path: Path, net: Any, sample: np.ndarray, output_names: list[str]) -> None:
    """Refuses the export unless ONNX Runtime computes the same function as PyTorch (app/backends/parity.py)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = net(torch.from_numpy(sample))
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    got = session.run(output_names, {INPUT_NAME: sample})
    problems = parity_problems(
        {name: e.numpy() for name, e in zip(output_names, expected, strict=True)},
        dict(zip(output_names, got, strict=True)),
    )
    if problems:
        raise CheckpointError(
            f"ONNX export of {path.parent} is not PyTorch's function: {'; '.join(problems)}; not written"
        )


def _parity_sample(height: int, width: int) -> np.ndarray:
    """Two inputs in the range preprocessing produces ([0, 1]): noise, and smooth photo-like waves
    (large uniform regions are where float32 reductions lose the most)."""
    noise = np.random.default_rng(0).random((3, height, width), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = np.stack([np.sin(xx / 23), np.cos(yy / 17), np.sin((xx + yy) / 31)]) * 0.4 + 0.5
    return np.stack([noise, waves.astype(np.float32)])


def export_onnx(model_dir: ModelDir, opset: int = DEFAULT_OPSET) -> Path:
    """Write `<model_dir>/model.onnx` (atomically) after checking it against PyTorch on a batch of 2."""
    import torch

    from app.nn.build import build_network

    net = build_network(model_dir)
    size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
    if size is None:
        raise CheckpointError(f"{model_dir.path}: preprocessing must produce a fixed input size to export")
    output_names = list(getattr(net, "output_names", ("logits",)))
    sample = _parity_sample(*size)
    target = model_dir.onnx_file("fp32")
    with replacing(target, "export") as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which cannot write opset 17;
        # the tracer warns about the static H/W checks in the patch unfolding, which is right for a
        # graph whose only dynamic dimension is the batch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        common: dict[str, Any] = {
            "input_names": [INPUT_NAME],
            "output_names": output_names,
            "opset_version": opset,
        }
        if opset <= 17:
            torch.onnx.export(
                _for_export(net),
                (torch.from_numpy(sample),),
                str(tmp),
                dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
                **common,
            )
        else:
            torch.onnx.export(
                _for_export(net),
                (torch.from_numpy(sample),),
                str(tmp),
                dynamo=True,
                external_data=False,
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
                **common,
            )
        set_metadata(tmp, onnx_metadata(model_dir, output_names, opset))
        _check_parity(tmp, net, sample, output_names)
    return target
