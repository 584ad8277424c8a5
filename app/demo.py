"""Models of the real MobileViTv2 architecture with seeded random weights, for offline demos and tests.

They are written in exactly the format the server loads (Hugging Face layout, safetensors), so
`transformers` can load them too, and carry `manifest.json` with `"random_weights": true` so that
`/models` and the `x-model-random-weights` response header say what they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from app.checkpoint import MANIFEST_FILE
from app.labels import read_labels
from app.preprocess import Preprocessing
from app.tasks.detection import SSDConfig


def hf_config(width: float, image_size: int, labels: list[str], architecture: str) -> dict[str, object]:
    """A config.json that both this project and `transformers.MobileViTV2Config` read."""
    from app.nn.mobilevitv2 import MobileViTV2Config

    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(MobileViTV2Config(width)).items()}
    return {
        "architectures": [architecture],
        "model_type": "mobilevitv2",
        **arch,
        "image_size": image_size,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "torch_dtype": "float32",
    }


def write_demo_model(
    out_dir: Path,
    task: str = "image-classification",
    width: float = 0.5,
    image_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write `<out_dir>/mobilevitv2-<width>-<imagenet1k|voc-deeplabv3|coco-ssdlite>-<size>-random/`."""
    from safetensors.torch import save_file

    from app.nn.mobilevitv2 import (
        MobileViTV2Config,
        MobileViTV2ForImageClassification,
        MobileViTV2ForSemanticSegmentation,
        randomize_weights,
    )
    from app.nn.ssd import MobileViTV2SSD

    width = float(width)
    if task == "image-classification":
        size = image_size or 256
        labels = read_labels("imagenet1k")
        cfg = MobileViTV2Config(width_multiplier=width)
        model = MobileViTV2ForImageClassification(cfg, len(labels))
        head_names: tuple[str, ...] = ("classifier",)
        architecture = "MobileViTV2ForImageClassification"
        name = f"mobilevitv2-{width}-imagenet1k-{size}-random"
        # Hub classifiers resize the short side to 288 for a 256 crop; keep that ratio at other sizes.
        preprocessing = Preprocessing(
            resize_shortest_edge=size * 288 // 256, resample=2, crop_height_width=(size, size)
        )
    elif task == "image-segmentation":
        size = image_size or 512
        labels = read_labels("voc")
        cfg = MobileViTV2Config(width_multiplier=width, output_stride=16)
        model = MobileViTV2ForSemanticSegmentation(cfg, len(labels))
        head_names = ("segmentation_head.classifier.convolution",)
        architecture = "MobileViTV2ForSemanticSegmentation"
        name = f"mobilevitv2-{width}-voc-deeplabv3-{size}-random"
        # As apple/mobilevitv2-1.0-voc-deeplabv3: short side to 512, center crop 512.
        preprocessing = Preprocessing(resize_shortest_edge=size, resample=2, crop_height_width=(size, size))
    elif task == "object-detection":
        size = image_size or 320
        labels = read_labels("coco")
        cfg = MobileViTV2Config(width_multiplier=width)
        model = MobileViTV2SSD(cfg, SSDConfig(), len(labels))
        head_names = (
            *(f"ssd_heads.{i}.loc_cls_layer.pw_conv.convolution" for i in range(5)),
            "ssd_heads.5.loc_cls_layer.convolution",
        )
        architecture = "MobileViTV2SSD"
        name = f"mobilevitv2-{width}-coco-ssdlite-{size}-random"
        # ml-cvnets' detectors see the whole photo resized to size x size, in RGB.
        preprocessing = Preprocessing(resize_height_width=(size, size), resample=2, bgr=False)
    else:
        raise ValueError(
            f"unknown task {task!r}: image-classification, image-segmentation or object-detection"
        )
    if size % 32:
        raise ValueError(f"image size must be a multiple of 32, got {size}")
    randomize_weights(model.eval(), seed, head_names=head_names)

    path = out_dir / name
    path.mkdir(parents=True, exist_ok=True)
    config = hf_config(width, size, labels, architecture)
    config["output_stride"] = cfg.output_stride
    if task == "object-detection":
        config.update(SSDConfig().to_dict())
    files = {
        "config.json": config,
        "preprocessor_config.json": preprocessing.to_hf_config(),
        MANIFEST_FILE: {
            "id": name,
            "task": task,
            "random_weights": True,
            "seed": seed,
            "generated_by": "mvit demo-models",
        },
    }
    for filename, content in files.items():
        (path / filename).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "model.safetensors").chmod(0o644)  # safetensors writes 0600; a container user must read it
    return path
