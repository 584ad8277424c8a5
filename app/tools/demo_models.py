"""Models of the real MobileViTv2 architecture with seeded random weights, for offline demos and tests.

Classifiers are calibrated on procedural photos (app/tools/calibrate.py) so that they answer like trained
ones: logits of a trained-like scale whose winner changes from photo to photo. Segmenters are fitted on
procedural scenes, so their maps follow a photo's shapes in regions of several classes. Detectors are
calibrated to find a handful of confident boxes per photo. Their answers are still meaningless.

They are written in exactly the format the server loads (Hugging Face layout, safetensors), so
`transformers` can load them too, and carry `manifest.json` with `"random_weights": true` so that
`/models` and the `x-model-random-weights` response header say what they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.intake.preprocess import Preprocessing, preprocess
from app.labels import read_labels
from app.nn.configs import ARCHITECTURE_BY_TASK, Architecture, SSDConfig
from app.repository.writer import hf_config, write_model_folder
from app.tasks.detection import Detector

if TYPE_CHECKING:
    import torch

# Procedural photos (classifiers) and scenes (segmenters) the demo weights are calibrated on.
CALIBRATION_PHOTOS = 16
CALIBRATION_SCENES = 24


def write_demo_model(
    out_dir: Path,
    task: str = "image-classification",
    width: float = 0.5,
    image_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write `<out_dir>/mobilevitv2-<width>-<imagenet1k|voc-deeplabv3|coco-ssdlite>-<size>-random/`."""

    from app.nn.build import create_network
    from app.nn.mobilevitv2 import randomize_weights

    if task not in ARCHITECTURE_BY_TASK:
        raise ValueError(f"unknown task {task!r}: {', '.join(ARCHITECTURE_BY_TASK)}")
    architecture = ARCHITECTURE_BY_TASK[task]
    width = float(width)
    size = image_size or architecture.image_size
    if size % 32:
        raise ValueError(f"image size must be a multiple of 32, got {size}")
    labels = read_labels(architecture.dataset)
    if architecture.demo_resize == "crop":
        preprocessing = Preprocessing(
            resize_shortest_edge=round(size * architecture.short_side_ratio),
            resample=2,
            crop_height_width=(size, size),
        )
    else:  # ml-cvnets' detectors see the whole photo resized to size x size, in RGB
        preprocessing = Preprocessing(resize_height_width=(size, size), resample=2, bgr=False)

    config = hf_config(width, size, labels, architecture.name)
    config["output_stride"] = architecture.output_stride
    if architecture.head_config is not None:
        config.update(architecture.head_config().to_dict())
    model = create_network(architecture, config, len(labels)).eval()
    randomize_weights(model, seed, head_names=architecture.head_names)
    calibrate_demo(model, architecture, config, preprocessing, size, len(labels), seed)
    kind = "-".join(part for part in (architecture.dataset, architecture.head) if part)
    name = f"mobilevitv2-{width}-{kind}-{size}-random"
    manifest = {
        "id": name,
        "task": task,
        "random_weights": True,
        "seed": seed,
        "generated_by": "mvit demo-models",
    }
    return write_model_folder(
        out_dir / name, config, preprocessing.to_hf_config(), manifest, model.state_dict()
    )


def calibrate_demo(
    model: torch.nn.Module,
    architecture: Architecture,
    config: dict[str, Any],
    preprocessing: Preprocessing,
    size: int,
    num_labels: int,
    seed: int,
) -> None:
    """Fit the random network's scales to procedural inputs, so that its outputs depend on the image."""
    import torch

    from app.tools.calibrate import (
        calibrate,
        calibrate_detector,
        calibrate_regions,
        procedural_photos,
        procedural_scenes,
    )

    if architecture.demo_calibration == "whiten":
        photos = [preprocess(photo, preprocessing) for photo in procedural_photos(CALIBRATION_PHOTOS, seed)]
        calibrate(model, architecture, torch.from_numpy(np.stack(photos)), seed)
    elif architecture.demo_calibration == "regions":
        scenes = list(procedural_scenes(CALIBRATION_SCENES, num_labels, size, seed))
        batch = torch.from_numpy(np.stack([preprocess(image, preprocessing) for image, _ in scenes]))
        calibrate_regions(model, architecture, batch, np.stack([regions for _, regions in scenes]))
    else:  # "boxes"
        photos = [preprocess(photo, preprocessing) for photo in procedural_photos(CALIBRATION_PHOTOS, seed)]
        detector = Detector.for_input(SSDConfig.from_dict(config), size, size)
        calibrate_detector(model, architecture, torch.from_numpy(np.stack(photos)), detector, seed)
