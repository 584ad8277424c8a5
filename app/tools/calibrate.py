"""Data-dependent initialisation of demo models, so that seeded random weights behave like trained ones.

Seeded random weights alone give outputs that barely depend on the image: every photo's pooled features
are nearly the same vector, so the logits are a constant plus noise. Calibrating on procedural photos
(`procedural_photos`, made here, nothing downloaded) fixes that in two steps:

1. BatchNorm statistics are measured on the photos (as after training), so every stage's activations are
   normalised per channel and keep what distinguishes one image from another;
2. the classifier's input is whitened per channel (centred on its mean over the photos, scaled by its
   spread) and its rows scaled so that the logits spread over images as a trained model's do.

`mvit demo-models` calibrates the architectures whose row says `calibrated_demo`; the dense heads
(DeepLabV3, SSDLite) need more than this (docs/model-repository.md says what was tried).

docs/model-repository.md lists the resulting statistics and the test that checks them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from app.nn.configs import Architecture

LOGIT_STD = 3.0  # spread of a class's logit over images
CLASS_BIAS_STD = 1.0  # spread of the classes' average logits


def procedural_photos(count: int, seed: int = 0) -> Iterator[Image.Image]:
    """Photo-like images: smooth colour fields, shapes of several colours and sizes, textures, noise."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        width, height = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        field = rng.random((4, 4, 3)) * 255
        canvas = Image.fromarray(field.astype(np.uint8), "RGB").resize(
            (width, height), Image.Resampling.BICUBIC
        )
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            w, h = rng.integers(width // 10, width // 2), rng.integers(height // 10, height // 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse(box, fill=color)
            elif kind == 1:
                draw.rectangle(box, fill=color)
            else:
                step = max(2, int(rng.integers(4, 16)))
                for stripe in range(box[0], box[2], 2 * step):
                    draw.rectangle((stripe, box[1], stripe + step, box[3]), fill=color)
        pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 8, (height, width, 3))
        yield Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@contextmanager
def _captured_input(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


def _run(model: nn.Module, batch: torch.Tensor) -> None:
    """The model over `batch`, a few images at a time, for what hooks and BatchNorms see."""
    with torch.no_grad():
        for chunk in batch.split(8):
            model(chunk)


def recalibrate_batch_norms(model: nn.Module, batch: torch.Tensor) -> None:
    """Running mean and variance of every BatchNorm measured on `batch`, as training would leave them."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calls below
        norm.train()
    _run(model, batch)
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()


def whiten_head(
    model: nn.Module,
    layer: nn.Module,
    batch: torch.Tensor,
    spread: float,
    level: float,
    generator: torch.Generator,
) -> None:
    """Give `layer` (a Linear or 1x1 Conv2d) outputs of spread `spread` over the batch, around random
    levels of spread `level`, from its inputs centred and scaled per channel."""
    with _captured_input(layer) as seen:
        _run(model, batch)
    inputs = torch.cat(seen).double()
    flat = inputs.transpose(0, 1).reshape(inputs.shape[1], -1) if inputs.ndim == 4 else inputs.T
    mean = flat.mean(dim=1)
    centred = flat - mean[:, None]
    std = centred.std(dim=1)
    std = torch.sqrt(std**2 + 0.1 * (std**2).mean())  # shrunk: no channel's noise blown up
    outputs = layer.weight.shape[0]
    weight = layer.weight.data.reshape(outputs, -1).double() / std
    with torch.no_grad():
        weight = weight * (spread / (weight @ centred).std(dim=1).clamp_min(1e-9))[:, None]
        bias = -(weight @ mean) + torch.randn(outputs, generator=generator, dtype=torch.float64) * level
        layer.weight.data.copy_(weight.reshape(layer.weight.shape).float())
        layer.bias.data.copy_(bias.float())


def calibrate(model: nn.Module, architecture: Architecture, batch: torch.Tensor, seed: int) -> None:
    """Make `model` (seeded random weights, eval mode) answer like a trained one on photos like `batch`."""
    generator = torch.Generator().manual_seed(seed)
    recalibrate_batch_norms(model, batch)
    for name in architecture.head_names:
        whiten_head(model, model.get_submodule(name), batch, LOGIT_STD, CLASS_BIAS_STD, generator)
