"""Data-dependent initialisation of demo models, so that seeded random weights behave like trained ones.

Seeded random weights alone give outputs that barely depend on the image: every photo's pooled features
are nearly the same vector, so the logits are a constant plus noise. Calibrating on procedural photos
(`procedural_photos`, made here, nothing downloaded) fixes that in two steps:

1. BatchNorm statistics are measured on the photos (as after training), so every stage's activations are
   normalised per channel and keep what distinguishes one image from another;
2. the classifier's input is whitened per channel (centred on its mean over the photos, scaled by its
   spread) and its rows scaled so that the logits spread over images as a trained model's do.

Segmentation heads are fitted instead: on procedural scenes whose shapes carry a class (one colour per
class), the DeepLabV3 classifier is solved by ridge regression from its input features to the scene's
class map. Its argmax maps then form coherent regions of several classes whose foreground overlaps the
shapes; the class of a region is mostly wrong (random features do not separate 20 hues linearly).

SSDLite heads get the detector's version of the classifiers' whitening: every output of their last convs
(per anchor: 4 box offsets, the background and 80 class logits) is centred and scaled over the photos'
places, and the background logit raised until the calibration photos average a handful of detections
above the default threshold. A fit to boxes did not carry over to unseen photos (docs/model-repository.md),
so these boxes do not follow objects: the counts and scores are trained-like, the boxes are not. A
detector trained end to end is benchmarks/train_proxy_detector.py.

`mvit demo-models` applies what the architecture's row names in `demo_calibration`.

docs/model-repository.md lists the resulting statistics and the test that checks them.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from app.nn.configs import Architecture
from app.nn.ssd import COORDINATES
from app.tasks.detection import DEFAULT_THRESHOLD, Detector

LOGIT_STD = 3.0  # spread of a class's logit over images
CLASS_BIAS_STD = 1.0  # spread of the classes' average logits
REGION_LOGIT_SCALE = 8.0  # a fitted one-hot target of 1 becomes a logit of this size
REGION_BALANCE = 0.5  # a cell of the fit weighs frequency(its class) ** -REGION_BALANCE
REGION_RIDGE = 1.0  # ridge penalty, relative to the features' mean weighted variance
# The classes a demo segmenter answers with besides the background (VOC's person, cat and dog):
# fitted to all 20, its maps of photos held 10-16 classes each, where a trained VOC model finds 2-4.
SEGMENTATION_CLASSES = (15, 8, 12)
DETECTION_LOGIT_STD = 4.0  # spread of a class logit over photos and places
BOX_OFFSET_STD = 0.5  # spread of the encoded box offsets: boxes stay near their anchors
DETECTIONS_PER_PHOTO = 3.0  # the calibration photos' mean detections above the default threshold
CLASS_SHARE = 0.3  # how much of a class logit is its own; the rest is the anchor's objectness


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


def procedural_scenes(
    count: int, classes: int, size: int, seed: int = 0
) -> Iterator[tuple[Image.Image, np.ndarray]]:
    """Square `size` x `size` scenes and their class maps: a grey, smoothly shaded background (class 0)
    with 2-5 ellipses and rectangles, each of a class 1..classes-1 drawn in that class's own colour."""
    rng = np.random.default_rng(seed)
    palette = [colorsys.hsv_to_rgb(k / (classes - 1), 0.9, 0.9) for k in range(classes - 1)]
    for _ in range(count):
        shade = rng.random((4, 4, 1)).repeat(3, axis=2) * 120 + 60
        canvas = Image.fromarray(shade.astype(np.uint8), "RGB").resize((size, size), Image.Resampling.BICUBIC)
        regions = Image.new("L", (size, size), 0)
        draw, draw_regions = ImageDraw.Draw(canvas), ImageDraw.Draw(regions)
        for _ in range(int(rng.integers(2, 6))):
            label = int(rng.integers(1, classes))
            x0, y0 = rng.integers(0, size * 3 // 4, 2)
            w, h = rng.integers(size // 6, size // 2, 2)
            color = tuple(int(np.clip(255 * c + rng.normal(0, 10), 0, 255)) for c in palette[label - 1])
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            ellipse = bool(rng.integers(2))
            for target, fill in ((draw, color), (draw_regions, label)):
                (target.ellipse if ellipse else target.rectangle)(box, fill=fill)
        pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 8, (size, size, 3))
        yield Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), np.asarray(regions)


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


def fit_region_head(model: nn.Module, layer: nn.Module, batch: torch.Tensor, regions: np.ndarray) -> None:
    """Solve the 1x1 conv `layer` by weighted ridge regression from its inputs to the one-hot class maps
    `regions` (images, height, width), taken at the layer's resolution. Cells of rare classes weigh more,
    so the shapes are not drowned by the background."""
    with _captured_input(layer) as seen:
        _run(model, batch)
    inputs = torch.cat(seen).double()
    channels, height, width = inputs.shape[1:]
    step_y, step_x = regions.shape[1] // height, regions.shape[2] // width
    cells = regions[:, step_y // 2 :: step_y, step_x // 2 :: step_x].astype(np.int64)
    targets = torch.from_numpy(cells).reshape(-1)
    one_hot = nn.functional.one_hot(targets, layer.weight.shape[0]).double()
    weights = one_hot.mean(dim=0).clamp_min(1e-6)[targets] ** -REGION_BALANCE
    weights = weights / weights.sum()
    features = inputs.permute(0, 2, 3, 1).reshape(-1, channels)
    mean, target_mean = weights @ features, weights @ one_hot
    centred = features - mean
    ridge = REGION_RIDGE * (weights @ centred**2).mean()
    gram = (centred.T * weights) @ centred + ridge * torch.eye(channels, dtype=torch.float64)
    weight = torch.linalg.solve(gram, (centred.T * weights) @ (one_hot - target_mean))
    with torch.no_grad():
        layer.weight.data.copy_((REGION_LOGIT_SCALE * weight.T).reshape(layer.weight.shape).float())
        layer.bias.data.copy_((REGION_LOGIT_SCALE * (target_mean - mean @ weight)).float())


def calibrate(model: nn.Module, architecture: Architecture, batch: torch.Tensor, seed: int) -> None:
    """Make a classifier (seeded random weights, eval mode) answer like a trained one on photos like `batch`."""
    generator = torch.Generator().manual_seed(seed)
    recalibrate_batch_norms(model, batch)
    for name in architecture.head_names:
        whiten_head(model, model.get_submodule(name), batch, LOGIT_STD, CLASS_BIAS_STD, generator)


def calibrate_regions(
    model: nn.Module, architecture: Architecture, batch: torch.Tensor, regions: np.ndarray
) -> None:
    """Make a segmenter answer in coherent regions of a few classes on scenes like `batch`, whose class maps
    are `regions`: the shapes' classes are folded onto SEGMENTATION_CLASSES before the fit."""
    recalibrate_batch_norms(model, batch)
    folded = np.asarray(SEGMENTATION_CLASSES)[(regions - 1) % len(SEGMENTATION_CLASSES)]
    targets = np.where(regions > 0, folded, 0)
    for name in architecture.head_names:
        fit_region_head(model, model.get_submodule(name), batch, targets)


def calibrate_detector(
    model: nn.Module,
    architecture: Architecture,
    batch: torch.Tensor,
    detector: Detector,
    seed: int,
) -> None:
    """Make an SSD (seeded random weights, eval mode) find a handful of confident boxes on photos like
    `batch`, which `detector` turns into detections."""
    generator = torch.Generator().manual_seed(seed)
    recalibrate_batch_norms(model, batch)
    per_anchor = model.ssd_heads[0].per_anchor  # 4 box offsets, the background, the classes
    lasts = [model.get_submodule(name) for name in architecture.head_names]
    for layer in lasts:
        whiten_head(model, layer, batch, DETECTION_LOGIT_STD, CLASS_BIAS_STD, generator)
        box = torch.arange(layer.weight.shape[0]) % per_anchor < COORDINATES
        layer.weight.data[box] *= BOX_OFFSET_STD / DETECTION_LOGIT_STD
        layer.bias.data[box] *= BOX_OFFSET_STD / DETECTION_LOGIT_STD
        # One objectness shared by an anchor's classes, so that an anchor sure of something is sure of one
        # class. It is the first class's row, so that class (COCO's person) wins more often than the others
        # (10% of the detections on 32 photos, against 1.25% for an even share), as persons do in COCO.
        weight = layer.weight.data.view(-1, per_anchor, *layer.weight.shape[1:])
        bias = layer.bias.data.view(-1, per_anchor)
        classes = slice(COORDINATES + 1, per_anchor)
        weight[:, classes] = weight[:, classes] * CLASS_SHARE + weight[:, COORDINATES + 1 : COORDINATES + 2]
        bias[:, classes] = bias[:, classes] * CLASS_SHARE + bias[:, COORDINATES + 1 : COORDINATES + 2]
    with torch.no_grad():
        outputs = [model(chunk) for chunk in batch.split(8)]
    logits, regression = (torch.cat([output[i] for output in outputs]).numpy() for i in (0, 1))

    def mean_detections(background: float) -> float:
        raised = logits.copy()
        raised[..., 0] += background
        found = [
            len(detector.answer(one, boxes, DEFAULT_THRESHOLD).scores)
            for one, boxes in zip(raised, regression, strict=True)
        ]
        return float(np.mean(found))

    # Fewer detections as the background logit rises. The search stops at its upper end: some seeds reach it
    # above the target (width 0.5, seeds 0 and 4: 4.5 and 4.75 per calibration photo).
    low, high = 0.0, 8 * DETECTION_LOGIT_STD
    for _ in range(20):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_detections(middle) > DETECTIONS_PER_PHOTO else (low, middle)
    for layer in lasts:
        layer.bias.data[torch.arange(layer.bias.shape[0]) % per_anchor == COORDINATES] += high
