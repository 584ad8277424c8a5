"""Models of the real MobileViTv2 architecture with seeded random weights, for offline demos and tests.

They are written in exactly the format the server loads (Hugging Face layout, safetensors), so
`transformers` can load them too, and carry `manifest.json` with `"random_weights": true` so that
`/models` and the `x-model-random-weights` response header say what they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from app.checkpoint import MANIFEST_FILE
from app.preprocess import Preprocessing


def imagenet_labels() -> list[str]:
    text = resources.files("app").joinpath("labels/imagenet1k.txt").read_text(encoding="utf-8")
    return text.splitlines()


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


def write_demo_classifier(out_dir: Path, width: float = 0.5, image_size: int = 256, seed: int = 0) -> Path:
    """Write `<out_dir>/mobilevitv2-<width>-imagenet1k-<size>-random/` and return its path."""
    from safetensors.torch import save_file

    from app.nn.mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, randomize_weights

    if image_size % 32:
        raise ValueError(f"image size must be a multiple of 32, got {image_size}")
    width = float(width)
    labels = imagenet_labels()
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=width), len(labels)).eval()
    randomize_weights(model, seed, head_names=("classifier",))

    name = f"mobilevitv2-{width}-imagenet1k-{image_size}-random"
    path = out_dir / name
    path.mkdir(parents=True, exist_ok=True)
    # Hub checkpoints resize the short side to 288 for a 256 crop; keep that ratio at other sizes.
    preprocessing = Preprocessing(
        resize_shortest_edge=image_size * 288 // 256,
        resample=2,
        crop_height_width=(image_size, image_size),
    )
    files = {
        "config.json": hf_config(width, image_size, labels, "MobileViTV2ForImageClassification"),
        "preprocessor_config.json": preprocessing.to_hf_config(),
        MANIFEST_FILE: {
            "id": name,
            "task": "image-classification",
            "random_weights": True,
            "seed": seed,
            "generated_by": "mvit demo-models",
        },
    }
    for filename, content in files.items():
        (path / filename).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
