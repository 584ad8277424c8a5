"""The statistics docs/model-repository.md quotes for the demo models (tests/unit/test_demo_models.py
bounds them): for a classifier, how much its logits depend on the photo; for a segmenter, how coherent
its maps are and how well they follow the shapes of scenes it was not fitted on; for a detector, how many
confident boxes and candidates it finds per photo.

    mvit demo-models models/ --width 0.5 --task classification --task segmentation --task detection
    python -m benchmarks.demo_model_stats models/mobilevitv2-0.5-imagenet1k-256-random --photos 6
    python -m benchmarks.demo_model_stats models/mobilevitv2-0.5-voc-deeplabv3-512-random --photos 6 [--bench]
    python -m benchmarks.demo_model_stats models/mobilevitv2-0.5-coco-ssdlite-320-random --photos 6
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np

from app.cpus import cpu_model
from benchmarks._common import command_line, jpeg

if TYPE_CHECKING:
    from app.runtime.models import ServedModel
    from app.tasks.detection import Detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a demo model's folder")
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument(
        "--bench", action="store_true", help="segmenters: classes per answer on the 9 bench photos (.[bench])"
    )
    args = parser.parse_args()

    from app.config import ServerSettings
    from app.runtime.models import load_source
    from app.runtime.pipeline import prepare
    from app.tools.calibrate import procedural_photos

    print(f"$ {command_line()}")
    print(f"cpu: {cpu_model()}")
    model = load_source(args.model, ServerSettings(models=[args.model]))
    if model.task.name == "image-segmentation":
        segmenter_stats(model, args.photos)
        if args.bench:
            from app.runtime.pipeline import predict
            from benchmarks._common import bench_photos

            counts = [len(predict(model, jpeg(photo), {}, 10**8)) for photo in bench_photos()]
            print(f"bench photos (640x480): classes per answer {counts}, mean {np.mean(counts):.1f}")
        return
    if model.task.name == "object-detection":
        detector_stats(model, args.photos)
        return
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


def region_stats(label_map: np.ndarray) -> tuple[int, float]:
    """Classes in a label map, and the share of neighbouring cells (right, below) with the same label."""
    same = ((label_map[1:] == label_map[:-1]).mean() + (label_map[:, 1:] == label_map[:, :-1]).mean()) / 2
    return len(np.unique(label_map)), float(same)


def foreground_overlap(label_map: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of the non-background cells of a label map and of the true class map."""
    predicted, true = label_map > 0, truth > 0
    return float((predicted & true).sum() / max(1, (predicted | true).sum()))


def segmenter_stats(model: ServedModel, count: int) -> None:
    from app.runtime.pipeline import prepare
    from app.tools.calibrate import procedural_photos, procedural_scenes

    classes = len(model.labels)
    size = int(model.model_dir.config["image_size"])
    scenes = list(procedural_scenes(count, classes, size, seed=1000))  # not the ones it was fitted on
    for kind, images in (("scene", [i for i, _ in scenes]), ("photo", list(procedural_photos(count, 1000)))):
        maps = [
            model.backend.infer(prepare(model, jpeg(image), 10**8).tensor[None])["logits"][0].argmax(axis=0)
            for image in images
        ]
        stats = [region_stats(m) for m in maps]
        print(
            f"{kind}s: classes per map {[c for c, _ in stats]}, neighbour agreement {[round(a, 2) for _, a in stats]}"
        )
        if kind == "scene":
            step = size // maps[0].shape[0]
            truth = [regions[step // 2 :: step, step // 2 :: step] for _, regions in scenes]
            overlaps = [round(foreground_overlap(m, t), 2) for m, t in zip(maps, truth, strict=True)]
            print(f"foreground IoU with the scenes' shapes: {overlaps}")
            right = [round(float((m == t).mean()), 2) for m, t in zip(maps, truth, strict=True)]
            print(f"cells of the right class: {right}")
            print(f"cells of the background: {[round(float((t == 0).mean()), 2) for t in truth]}")


def detections(model: ServedModel, photo: bytes) -> tuple[Detections, int]:
    """A detector's detections on a photo (cvnets' 0.01 candidate floor applied), and how many candidates
    its softmax puts above that floor before NMS."""
    from app.runtime.pipeline import prepare
    from app.tasks.detection import DEFAULT_THRESHOLD, softmax

    outputs = model.backend.infer(prepare(model, photo, 10**8).tensor[None])
    candidates = int((softmax(outputs["logits"][0])[:, 1:] > model.detector.config.conf_threshold).sum())
    found = model.detector.detect(outputs["logits"][0], outputs["box_regression"][0], DEFAULT_THRESHOLD)
    return found, candidates


def detector_stats(model: ServedModel, count: int) -> None:
    from app.tasks.detection import DEFAULT_THRESHOLD
    from app.tools.calibrate import procedural_photos

    found = [detections(model, jpeg(image)) for image in procedural_photos(count, 1000)]
    confident = [d.above(DEFAULT_THRESHOLD) for d, _ in found]
    print(f"detections above {DEFAULT_THRESHOLD} per photo: {[len(c.scores) for c in confident]}")
    print(f"best score per photo: {[round(float(d.scores.max(initial=0)), 2) for d, _ in found]}")
    print(f"candidates above cvnets' 0.01 floor per photo: {[n for _, n in found]}")
    labels = [sorted({model.labels[i] for i in c.labels}) for c in confident]
    print(f"labels per photo: {labels}")


if __name__ == "__main__":
    main()
