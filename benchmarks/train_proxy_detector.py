"""A trained proxy detector: MobileViTv2 SSDLite trained end to end on procedural scenes, the only detection
accuracy evidence available without Apple's COCO checkpoints (no COCO, no Hub here).

Scenes are smooth random colour fields with noise and 1-4 objects of six kinds (circle, square, triangle,
cross, ring, stripes), each in a random colour, place and size (10-50% of the side); scene i is a function
of i, so the run is deterministic. Training follows ml-cvnets' SSD recipe: anchors matched at IoU > 0.5
plus each object's best anchor, cross-entropy with 3:1 hard-negative mining, smooth L1 on the encoded
offsets. It writes a model folder in the service's format (it serves like any detector), then prints, on
held-out scenes, boxes per scene above threshold 0.5, precision and recall at IoU 0.5, and mAP@0.5. With
`--quantize`, it also exports to ONNX, quantizes to INT8 on training scenes, and prints the same figures
for PyTorch bf16, ONNX Runtime fp32 and INT8 (and OpenVINO fp32, bf16 and INT8 where it is installed).

    python -m benchmarks.train_proxy_detector models/ --quantize
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from app.cpus import cpu_model
from app.tasks.detection import box_iou
from benchmarks._common import command_line
from benchmarks._proxy import (
    deterministic_torch,
    export_int8,
    parse_proxy_arguments,
    proxy_parser,
    train,
    trained_size,
    write_proxy,
)

if TYPE_CHECKING:
    from app.runtime.models import ServedModel

CLASSES = ("circle", "square", "triangle", "cross", "ring", "stripes")
TRAIN_SEED, HELD_OUT_SEED = 0, 1_000_000  # scene i of a split is drawn from seed + i
IOU_MATCH = 0.5
NEGATIVES_PER_POSITIVE = 3
THRESHOLD = 0.5  # the service's default detection threshold


def draw_scene(index: int, size: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Scene `index`: the image, its boxes (n, 4: x1, y1, x2, y2 normalised) and labels (n,: 1..6)."""
    rng = np.random.default_rng(index)
    field = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(field, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(len(CLASSES)))
        w, h = (int(v) for v in rng.integers(size // 10, size // 2 + 1, 2))
        if CLASSES[label] in ("circle", "square", "ring", "cross"):
            h = w
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        x1, y1 = x0 + w - 1, y0 + h - 1
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        line = max(2, min(w, h) // 6)
        kind = CLASSES[label]
        if kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=color)
        elif kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=color)
        elif kind == "triangle":
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=color)
        elif kind == "cross":
            middle_x, middle_y = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle((middle_x - line // 2, y0, middle_x + line // 2, y1), fill=color)
            draw.rectangle((x0, middle_y - line // 2, x1, middle_y + line // 2), fill=color)
        elif kind == "ring":
            draw.ellipse((x0, y0, x1, y1), outline=color, width=line)
        else:
            for x in range(x0, x1 + 1, 2 * line):
                draw.rectangle((x, y0, min(x + line - 1, x1), y1), fill=color)
        boxes.append([x0 / size, y0 / size, (x1 + 1) / size, (y1 + 1) / size])
        labels.append(label + 1)  # 0 is the background
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image, np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box in `a` (n, 4) with every one in `b` (m, 4)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def assign(
    anchors: np.ndarray, boxes: np.ndarray, labels: np.ndarray, center_variance: float, size_variance: float
) -> tuple[np.ndarray, np.ndarray]:
    """cvnets' SSD matching: each anchor's class (0 = background) and its offsets to its object."""
    corners = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    overlaps = iou_matrix(corners, boxes)
    best_object, best_overlap = overlaps.argmax(1), overlaps.max(1)
    best_anchor = overlaps.argmax(0)  # every object gets at least its best anchor
    best_object[best_anchor] = np.arange(len(boxes))
    best_overlap[best_anchor] = 1.0
    classes = np.where(best_overlap > IOU_MATCH, labels[best_object], 0)
    matched = boxes[best_object]
    centre, size = (matched[:, :2] + matched[:, 2:]) / 2, matched[:, 2:] - matched[:, :2]
    offsets = np.concatenate(
        [
            (centre - anchors[:, :2]) / (center_variance * anchors[:, 2:]),
            np.log(size / anchors[:, 2:]) / size_variance,
        ],
        1,
    )
    return classes, offsets.astype(np.float32)


def average_precision(
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    truths: list[tuple[np.ndarray, np.ndarray]],
    classes: int,
) -> float:
    """mAP at IoU 0.5 (all-point interpolation, as PASCAL VOC from 2010), over classes 1..classes."""
    precisions = []
    for label in range(1, classes + 1):
        scored, objects = [], 0
        for (boxes, scores, labels), (true_boxes, true_labels) in zip(detections, truths, strict=True):
            wanted = true_boxes[true_labels == label]
            objects += len(wanted)
            taken = np.zeros(len(wanted), bool)
            mine = labels == label
            for score, box in sorted(zip(scores[mine], boxes[mine], strict=True), key=lambda s: -s[0]):
                hit = False
                if len(wanted):
                    overlaps = box_iou(box, wanted)
                    overlaps[taken] = 0
                    if overlaps.max() >= 0.5:
                        taken[overlaps.argmax()] = hit = True
                scored.append((score, hit))
        if objects == 0:
            continue
        if not scored:
            precisions.append(0.0)
            continue
        scored.sort(key=lambda s: -s[0])
        hits = np.cumsum([hit for _, hit in scored])
        recall = np.concatenate([[0], hits / objects, [1]])
        precision = np.concatenate([[1], hits / np.arange(1, len(scored) + 1), [0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at >= recall
        precisions.append(float(np.sum((recall[1:] - recall[:-1]) * precision[1:])))
    return float(np.mean(precisions))


def evaluate(
    detect: Callable[[Image.Image], tuple[np.ndarray, np.ndarray, np.ndarray]],
    first: int,
    count: int,
    size: int,
) -> dict[str, float]:
    """Boxes per scene at threshold 0.5, precision and recall at IoU 0.5 (right class), and mAP@0.5."""
    detections, truths = [], []
    for i in range(count):
        image, boxes, labels = draw_scene(first + i, size)
        detections.append(detect(image))
        truths.append((boxes, labels))
    kept = right = objects = found = 0
    for (boxes, scores, labels), (true_boxes, true_labels) in zip(detections, truths, strict=True):
        confident = scores >= THRESHOLD
        hits = (iou_matrix(boxes[confident], true_boxes) >= 0.5) & (
            labels[confident][:, None] == true_labels[None]
        )
        kept, objects = kept + int(confident.sum()), objects + len(true_boxes)
        right += int(hits.any(axis=1).sum())  # detections on an object of their class
        found += int(hits.any(axis=0).sum())  # objects with such a detection
    return {
        "boxes_per_scene": kept / count,
        "precision": right / max(1, kept),
        "recall": found / objects,
        "map50": average_precision(detections, truths, len(CLASSES)),
    }


def report(name: str, figures: dict[str, float]) -> None:
    print(
        f"{name}: {figures['boxes_per_scene']:.2f} boxes per scene above {THRESHOLD}, precision "
        f"{figures['precision']:.1%}, recall {figures['recall']:.1%} (IoU 0.5, right class), "
        f"mAP@0.5 {figures['map50']:.3f}"
    )


def main() -> None:
    parser = proxy_parser(__doc__.split("\n\n")[0], image_size=256)
    parser.add_argument("--steps", type=int, default=560)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--held-out-scenes", type=int, default=200)
    args = parse_proxy_arguments(parser)
    if args.evaluate is not None:
        compare_precisions(args.evaluate, args.held_out_scenes, trained_size(args.evaluate), args.quantizer)
        return

    import torch

    from app.nn.build import create_network
    from app.nn.configs import ARCHITECTURE_BY_TASK, SSDConfig
    from app.repository.writer import hf_config
    from app.tasks.detection import Detector

    print(f"$ {command_line()}")
    print(f"cpu: {cpu_model()}")
    deterministic_torch(args.threads)
    size = args.image_size
    architecture = ARCHITECTURE_BY_TASK["object-detection"]
    ssd = SSDConfig()
    labels = ["background", *CLASSES]
    config = hf_config(args.width, size, labels, architecture.name)
    config.update(ssd.to_dict())
    model = create_network(architecture, config, len(labels))
    with torch.no_grad():  # start sure of the background, as trained detectors are
        for name in architecture.head_names:
            last = model.get_submodule(name)
            last.weight.mul_(0.1)
            per_anchor = last.bias.view(-1, 4 + len(labels))
            per_anchor.zero_()
            per_anchor[:, 4] = math.log(len(labels) * 19)  # background probability 0.95
    detector = Detector.for_input(ssd, size, size)

    def batch(first: int, count: int, flip: np.ndarray) -> tuple[torch.Tensor, ...]:
        images, classes, offsets = [], [], []
        for i in range(count):
            image, boxes, box_labels = draw_scene(TRAIN_SEED + first + i, size)
            pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255
            if flip[i]:  # a mirrored scene is a scene; its boxes mirror with it
                pixels = pixels[:, :, ::-1]
                boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
            anchor_classes, anchor_offsets = assign(
                detector.anchors, boxes, box_labels, ssd.center_variance, ssd.size_variance
            )
            images.append(np.ascontiguousarray(pixels))
            classes.append(anchor_classes)
            offsets.append(anchor_offsets)
        return tuple(torch.from_numpy(np.stack(a)) for a in (images, classes, offsets))

    flips = np.random.default_rng(0).random((args.steps, args.batch_size)) < 0.5
    started = time.perf_counter()
    losses: list[tuple[float, float]] = []

    def loss_of(step: int) -> torch.Tensor:
        x, classes, offsets = batch(step * args.batch_size, args.batch_size, flips[step])
        logits, regression = model(x)
        positive = classes > 0
        positives = positive.sum().clamp_min(1)
        per_anchor = torch.nn.functional.cross_entropy(logits.transpose(1, 2), classes, reduction="none")
        with torch.no_grad():  # hard negatives: the worst background anchors, 3 per positive of the scene
            background_loss = per_anchor.masked_fill(positive, 0)
            rank = background_loss.argsort(1, descending=True).argsort(1)
            negative = rank < NEGATIVES_PER_POSITIVE * positive.sum(1, keepdim=True)
        classification = per_anchor[positive | negative].sum() / positives
        localization = (
            torch.nn.functional.smooth_l1_loss(regression[positive], offsets[positive], reduction="sum")
            / positives
        )
        losses.append((classification.item(), localization.item()))
        return classification + localization

    def after_step(step: int) -> None:
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            recent = np.mean(losses[-50:], axis=0)
            print(
                f"step {step + 1}/{args.steps}: classification {recent[0]:.3f}, localization {recent[1]:.3f}, "
                f"{time.perf_counter() - started:.0f} s"
            )

    train(model, loss_of, args.steps, 3e-3, 0.1, after_step)

    model.eval()

    def detect_torch(image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255
        with torch.no_grad():
            logits, regression = model(torch.from_numpy(np.ascontiguousarray(pixels)))
        found = detector.detect(logits[0].numpy(), regression[0].numpy(), THRESHOLD)
        return found.boxes, found.scores, found.labels

    figures = evaluate(detect_torch, HELD_OUT_SEED, args.held_out_scenes, size)
    report("held-out scenes, torch fp32", figures)
    folder = write_proxy(
        args.directory,
        f"proxy-mobilevitv2-{args.width}-shapes-ssdlite-{size}",
        architecture.task,
        config,
        model.state_dict(),
        "train_proxy_detector",
        f"procedural scenes of {len(CLASSES)} shape classes (benchmarks/train_proxy_detector.py)",
        {"held_out": {key: round(value, 4) for key, value in figures.items()}},
    )
    print(f"{folder}: written, {time.perf_counter() - started:.0f} s in all")
    if args.quantize:
        compare_precisions(folder, args.held_out_scenes, size, args.quantizer)


def compare_precisions(folder: Path, held_out: int, size: int, quantizer: str = "onnxruntime") -> None:
    """Export, quantize on 100 training scenes, and evaluate every runtime and precision the service offers
    (OpenVINO's where it is installed) on the held-out scenes."""
    import importlib.util
    import io

    from app.config import ServerSettings
    from app.runtime.models import load_source
    from app.runtime.pipeline import prepare

    calibration = folder.with_name(f"{folder.name}-calibration")  # beside the model folder, not in it
    calibration.mkdir(exist_ok=True)
    for i in range(100):
        draw_scene(TRAIN_SEED + i, size)[0].save(calibration / f"{i}.png")
    export_int8(folder, calibration, quantizer)
    candidates: dict[str, dict[str, str]] = {
        "PyTorch bf16": {"backend": "torch", "torch_precision": "bf16"},
        "ONNX Runtime fp32": {"backend": "onnx"},
        "ONNX Runtime int8": {"backend": "onnx", "onnx_precision": "int8"},
    }
    if importlib.util.find_spec("openvino") is not None:
        candidates["OpenVINO fp32"] = {"backend": "openvino"}
        candidates["OpenVINO bf16"] = {"backend": "openvino", "openvino_precision": "bf16"}
        candidates["OpenVINO int8"] = {"backend": "openvino", "onnx_precision": "int8"}
    for name, choice in candidates.items():
        model = load_source(str(folder), ServerSettings(models=[str(folder)], **choice))

        def detect(
            image: Image.Image, model: ServedModel = model
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            outputs = model.backend.infer(prepare(model, buffer.getvalue(), 10**8).tensor[None])
            found = model.detector.detect(outputs["logits"][0], outputs["box_regression"][0], THRESHOLD)
            return found.boxes, found.scores, found.labels

        report(f"held-out scenes, {name}", evaluate(detect, HELD_OUT_SEED, held_out, size))


if __name__ == "__main__":
    main()
