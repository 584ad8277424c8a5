"""SSD post-processing time (`app.tasks.detection.postprocess`) on scenes where NMS suppresses most
candidates, as a trained detector's outputs make it: objects covered by many overlapping anchors of their
class and a few of two other classes, the rest of the anchors near zero. No model involved. Timed twice:
every detection down to cvnets' 0.01 floor (what evaluations use), and only those at or above the
service's default threshold (`min_score`, what `/detect` computes: the same detections above it).

    python -m benchmarks.bench_detection_postprocess
    python -m benchmarks.bench_detection_postprocess --model models/mobilevitv2-0.5-coco-ssdlite-320-random

With --model, a detector folder's own outputs on the 9 bench photos (640x480) instead of the scenes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from app.cpus import cpu_model
from app.tasks.detection import DEFAULT_THRESHOLD, postprocess, softmax
from benchmarks._common import command_line

ANCHORS, CLASSES, OBJECTS = 3232, 81, 20  # SSDLite at 320 px, COCO


def scene(anchors_per_object: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.full((ANCHORS, CLASSES), 1e-4, np.float32)
    boxes = rng.uniform(0, 1, (ANCHORS, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + 0.05
    order = rng.permutation(ANCHORS)
    taken = 0
    for index, (x, y) in enumerate(rng.uniform(0.1, 0.7, (OBJECTS, 2))):
        for rank, cls in enumerate((1 + index % 80, 1 + (index + 7) % 80, 1 + (index + 31) % 80)):
            count = anchors_per_object if rank == 0 else anchors_per_object // 5
            chosen = order[taken : taken + count] if taken + count <= ANCHORS else order[:count]
            taken += count
            jitter = rng.normal(0, 0.01, (count, 4))
            boxes[chosen] = np.array([x, y, x + 0.25, y + 0.25]) + jitter
            scores[chosen, cls] = rng.uniform(0.02, 0.95 if rank == 0 else 0.3, count)
    scores[:, 0] = 1 - scores[:, 1:].sum(axis=1)
    return scores, boxes


def on_model(folder: str, repeats: int = 20) -> None:
    """Per bench photo: the whole post-processing then the threshold, against `Detector.answer`."""
    from app.config import ServerSettings
    from app.runtime.models import load_source
    from app.runtime.pipeline import prepare
    from benchmarks._common import bench_set

    model = load_source(folder, ServerSettings(models=[folder], backend="onnx", onnx_auto_export=False))
    detector, threshold = model.detector, DEFAULT_THRESHOLD
    full, answer, candidates = [], [], []
    for photo in bench_set("640x480"):
        outputs = model.backend.infer(prepare(model, photo, 10**8).tensor[None])
        logits, regression = outputs["logits"][0], outputs["box_regression"][0]
        candidates.append(int((softmax(logits)[:, 1:] > detector.config.conf_threshold).sum()))
        for times, only_answer in ((full, False), (answer, True)):
            started = time.perf_counter()
            for _ in range(repeats):
                if only_answer:
                    detector.answer(logits, regression, threshold)
                else:
                    detector.detect(logits, regression, threshold).above(threshold)
            times.append(1000 * (time.perf_counter() - started) / repeats)
    print(
        f"{model.id}: candidates > {detector.config.conf_threshold}: median {statistics.median(candidates)} a photo; "
        f"ms per photo, median of 9 photos: all then >= {threshold} {statistics.median(full):.2f}, "
        f"answer only {statistics.median(answer):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="a detector folder, exported (repeatable)")
    args = parser.parse_args()
    print(f"$ {command_line()}")
    print(f"{time.strftime('%Y-%m-%d')}; {cpu_model()}, {os.cpu_count()} cores")
    if args.model:
        for folder in args.model:
            on_model(folder)
        return
    print(
        "| anchors per object | candidates > 0.01 | detections | ms, median of 3 scenes x 7 runs (min-max) "
        f"| detections >= {DEFAULT_THRESHOLD} | ms with min_score {DEFAULT_THRESHOLD} |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for per_object in (25, 100, 200):
        times: dict[float, list[float]] = {0.0: [], DEFAULT_THRESHOLD: []}
        kept: dict[float, list[int]] = {0.0: [], DEFAULT_THRESHOLD: []}
        candidates = []
        for seed in range(3):
            scores, boxes = scene(per_object, seed)
            candidates.append(int((scores[:, 1:] > 0.01).sum()))
            for min_score in times:
                for _ in range(7):
                    started = time.perf_counter()
                    found = postprocess(scores, boxes, min_score=min_score)
                    times[min_score].append(1000 * (time.perf_counter() - started))
                kept[min_score].append(len(found.labels))
        print(
            f"| {per_object} | {statistics.median(candidates)} | "
            + " | ".join(
                f"{statistics.median(kept[m])} | {statistics.median(times[m]):.2f} "
                f"({min(times[m]):.2f}-{max(times[m]):.2f})"
                for m in times
            )
            + " |"
        )


if __name__ == "__main__":
    main()
