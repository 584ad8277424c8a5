"""How much a classifier's logits depend on the photo: the statistics docs/model-repository.md quotes for
the demo classifiers (and that tests/unit/test_demo_models.py bounds).

    mvit demo-models models/ --width 0.5
    python -m scripts.demo_model_stats models/mobilevitv2-0.5-imagenet1k-256-random --photos 6
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from scripts._common import command_line, jpeg


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
    from app.tools.calibrate import procedural_photos

    print(f"$ {command_line()}")
    print(f"cpu: {cpu_model()}")
    model = load_model(args.model, Settings(models=[args.model]))
    # Procedural photos from another seed than the ones demo models are calibrated on.
    photos = [jpeg(image) for image in procedural_photos(args.photos, seed=1000)]
    logits = np.stack(
        [model.backend.infer(prepare(model, p, 10**8).tensor[None])["logits"][0] for p in photos]
    )
    print(f"largest |logit| per photo: {[round(float(v), 1) for v in np.abs(logits).max(axis=1)]}")
    print(
        f"top-1 class per photo: {logits.argmax(axis=1).tolist()} ({len(set(logits.argmax(axis=1).tolist()))} different)"
    )
    print(f"spread of a class's logit over photos: {logits.std(axis=0).mean():.2f}")
    print(f"spread over classes on one photo: {logits.std(axis=1).mean():.2f}")


if __name__ == "__main__":
    main()
