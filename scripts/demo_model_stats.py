"""How much a classifier's logits depend on the photo: the statistics docs/model-repository.md quotes for
the demo classifiers (and that tests/unit/test_demo_models.py bounds).

    mvit demo-models models/ --width 0.5
    python -m scripts.demo_model_stats models/mobilevitv2-0.5-imagenet1k-256-random --photos 6
"""

from __future__ import annotations

import argparse
import io
import platform
from pathlib import Path

import numpy as np
from PIL import Image

from scripts._common import command_line


def photo(seed: int) -> bytes:
    """A 640x480 photo-like JPEG: colour waves of random periods with noise (no calibration photo)."""
    rng = np.random.default_rng(1000 + seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    waves = np.stack(
        [
            128 + 100 * np.sin(xx / (7 + 13 * rng.random())),
            128 + 100 * np.cos(yy / (5 + 11 * rng.random())),
            128 + 90 * np.sin((xx + yy) / (9 + 17 * rng.random())),
        ],
        axis=-1,
    )
    pixels = np.clip(waves + rng.normal(0, 12, waves.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a classifier's model folder")
    parser.add_argument("--photos", type=int, default=6)
    args = parser.parse_args()

    from app.config import Settings
    from app.runtime.models import load_model
    from app.runtime.pipeline import prepare

    print(f"$ {command_line()}")
    print(f"cpu: {cpu_model()}")
    model = load_model(args.model, Settings(models=[args.model]))
    logits = np.stack(
        [
            model.backend.infer(prepare(model, photo(i), 10**8).tensor[None])["logits"][0]
            for i in range(args.photos)
        ]
    )
    print(f"largest |logit| per photo: {[round(float(v), 1) for v in np.abs(logits).max(axis=1)]}")
    print(
        f"top-1 class per photo: {logits.argmax(axis=1).tolist()} ({len(set(logits.argmax(axis=1).tolist()))} different)"
    )
    print(f"spread of a class's logit over photos: {logits.std(axis=0).mean():.2f}")
    print(f"spread over classes on one photo: {logits.std(axis=1).mean():.2f}")


if __name__ == "__main__":
    main()
