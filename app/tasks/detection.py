"""Object detection: SSD anchors, box decoding, class-wise NMS, and the Hugging Face response schema.

All NumPy, so the PyTorch and ONNX backends share it. The conventions are ml-cvnets' (see
`../shared/fixtures/cvnets/README.md`): softmax over all classes with background at index 0, per class
keep p > conf_threshold and the top-k, greedy NMS that suppresses IoU > threshold, then the best
`objects_per_image` across classes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from app.errors import unit_interval_param
from app.nn.configs import SSDConfig
from app.tasks import drawing
from app.tasks.base import ModelContext, Outputs, Task, TensorOutput

TASK = "object-detection"
PARAMETERS = ("threshold",)
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detector:
    """What turns one image's raw outputs into detections: the settings and the anchors of its input size."""

    config: SSDConfig
    anchors: np.ndarray

    @classmethod
    def for_input(cls, config: SSDConfig, height: int, width: int) -> Detector:
        sizes = feature_map_sizes(height, width, config.output_strides)
        anchors = ssd_anchors(
            sizes, config.anchor_aspect_ratios, config.anchor_min_scale, config.anchor_max_scale
        )
        return cls(config, anchors)

    def detect(
        self, logits: np.ndarray, regression: np.ndarray, threshold: float, min_score: float = 0.0
    ) -> Detections:
        """cvnets' detections, down to its candidate floor (0.01) or `threshold` where that is lower;
        with `min_score`, only those scoring at least that, the same ones (see `postprocess`)."""
        c = self.config
        boxes = decode_boxes(regression, self.anchors, c.center_variance, c.size_variance)
        return postprocess(
            softmax(logits),
            boxes,
            min(c.conf_threshold, threshold),
            c.top_k_per_class,
            c.nms_iou_threshold,
            c.objects_per_image,
            min_score,
        )

    def answer(self, logits: np.ndarray, regression: np.ndarray, threshold: float) -> Detections:
        """`detect(...).above(threshold)`: what a caller sees, without computing what it would drop."""
        return self.detect(logits, regression, threshold, min_score=threshold)


def feature_map_sizes(height: int, width: int, output_strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map size of each SSD level for an input size (stride-2 3x3 convs round up)."""
    sizes = []
    h, w = height, width
    for stride in (2, 2, 2, 2):  # stem and encoder layers 2..4 reach stride 16
        h, w = math.ceil(h / stride), math.ceil(w / stride)
    for level, stride in enumerate(output_strides):
        if stride == -1:
            sizes.append((1, 1))
            continue
        if level > 0:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def ssd_anchors(
    sizes: Sequence[tuple[int, int]],
    aspect_ratios: Sequence[Sequence[int]],
    min_scale: float = 0.1,
    max_scale: float = 1.05,
) -> np.ndarray:
    """Anchors (cx, cy, w, h), normalised to [0, 1], in (level, y, x, anchor) order."""
    scales = np.linspace(min_scale, max_scale, len(sizes) + 1)
    levels = []
    for level, ((fm_h, fm_w), ratios) in enumerate(zip(sizes, aspect_ratios, strict=True)):
        s_min, s_max = scales[level], math.sqrt(scales[level] * scales[level + 1])
        shapes = [(s_min, s_min), (s_max, s_max)]
        for ratio in ratios:
            root = math.sqrt(ratio)
            shapes += [(s_min * root, s_min / root), (s_min / root, s_min * root)]
        ys, xs = np.meshgrid((np.arange(fm_h) + 0.5) / fm_h, (np.arange(fm_w) + 0.5) / fm_w, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)  # (cells, 2), y outer, x inner
        wh = np.asarray(shapes)  # (anchors, 2)
        cells, anchors = len(centres), len(wh)
        level_anchors = np.concatenate([np.repeat(centres, anchors, axis=0), np.tile(wh, (cells, 1))], axis=1)
        levels.append(level_anchors)
    return np.clip(np.concatenate(levels), 0.0, 1.0).astype(np.float32)


def decode_boxes(
    regression: np.ndarray, anchors: np.ndarray, center_variance: float = 0.1, size_variance: float = 0.2
) -> np.ndarray:
    """Offsets (dx, dy, dw, dh) against anchors (cx, cy, w, h) -> boxes (x1, y1, x2, y2), normalised."""
    centre = anchors[:, :2] + regression[:, :2] * center_variance * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(regression[:, 2:] * size_variance)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Detections:
    labels: np.ndarray  # (n,) class index, 1.. (0 is background)
    scores: np.ndarray  # (n,)
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 normalised, not clipped

    def above(self, threshold: float) -> Detections:
        """Those scoring at least `threshold` (`Detector.detect` keeps candidates down to cvnets' floor)."""
        keep = self.scores >= threshold
        return Detections(self.labels[keep], self.scores[keep], self.boxes[keep])


def postprocess(
    scores: np.ndarray,
    boxes: np.ndarray,
    conf_threshold: float = 0.01,
    top_k: int = 400,
    iou_threshold: float = 0.5,
    max_objects: int = 200,
    min_score: float = 0.0,
) -> Detections:
    """cvnets' SSD post-processing on softmax scores (anchors, classes) and decoded boxes (anchors, 4).

    Equivalent to: per class, p > conf_threshold, top_k, greedy NMS; then the best `max_objects` across
    classes. Whether a box survives NMS depends only on higher-scoring boxes of its own class, so each
    class keeps a queue of its candidates, best first, and a heap holds every queue's head: the best head
    is the next survivor, and it suppresses what overlaps it in its own queue only. That is one step per
    survivor (at most `max_objects`), however many candidates pass the confidence floor.

    `min_score` returns only the detections scoring at least that, and the very same ones: a box's rank
    in its class's top_k, its fate in NMS and its place among the `max_objects` depend only on boxes
    that score higher, so candidates below `min_score` change nothing above it and are left out at once.
    """
    class_scores = scores[:, 1:]
    # Two comparisons, as the full path and `Detections.above` make them: choosing the higher bound in
    # Python would differ where the two round to the same float32.
    passing = class_scores > conf_threshold
    if min_score > 0:
        passing &= class_scores >= min_score
    anchor_index, class_index = np.nonzero(passing)
    class_index += 1
    candidate_scores = scores[anchor_index, class_index]
    candidate_boxes = boxes[anchor_index].astype(np.float64)
    # By class, best first; equal scores keep candidate order (lexsort is stable), as in the heap's keys.
    by_class = np.lexsort((-candidate_scores, class_index))
    grouped = class_index[by_class]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])[: by_class.size]
    ends = np.r_[starts[1:], by_class.size][: starts.size]
    queues = [by_class[start : min(end, start + top_k)] for start, end in zip(starts, ends, strict=True)]
    heads = [(-float(candidate_scores[queue[0]]), int(queue[0]), q) for q, queue in enumerate(queues)]
    heapq.heapify(heads)
    kept: list[int] = []
    while heads and len(kept) < max_objects:
        _, best, q = heapq.heappop(heads)
        kept.append(best)
        rest = queues[q][1:]
        if rest.size:
            with np.errstate(divide="ignore", invalid="ignore"):
                rest = rest[~(box_iou(candidate_boxes[best], candidate_boxes[rest]) > iou_threshold)]
        if rest.size:
            queues[q] = rest
            heapq.heappush(heads, (-float(candidate_scores[rest[0]]), int(rest[0]), q))
    keep = np.asarray(kept, dtype=np.intp)
    return Detections(class_index[keep].astype(np.int64), candidate_scores[keep], boxes[anchor_index[keep]])


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box (x1, y1, x2, y2) with each of `others`; NaN where both have no area."""
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def parse_params(raw: Mapping[str, Any]) -> float:
    return unit_interval_param("threshold", raw.get("threshold", DEFAULT_THRESHOLD))


def to_hf(
    detections: Detections, image_size: tuple[int, int], labels: Sequence[str], threshold: float
) -> list[dict[str, Any]]:
    """`[{"score", "label", "box": {xmin, ymin, xmax, ymax}}]`, integer pixels clipped to the image."""
    width, height = image_size
    scale = np.array([width, height, width, height], dtype=np.float64)
    limit = np.array([width, height, width, height], dtype=np.float64)
    results = []
    for label, score, box in zip(detections.labels, detections.scores, detections.boxes, strict=True):
        if score < threshold:
            continue
        xmin, ymin, xmax, ymax = np.clip(box.astype(np.float64) * scale, 0, limit).astype(int).tolist()
        results.append(
            {
                "score": float(score),
                "label": labels[label],
                "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            }
        )
    return results


def draw(
    photo: Image.Image, results: Sequence[dict[str, Any]], full_size: tuple[int, int], labels: Sequence[str]
) -> Image.Image:
    """A box per object, labelled with its class and score."""
    scale_x, scale_y = photo.width / full_size[0], photo.height / full_size[1]
    face = drawing.text_font(drawing.text_size(photo))
    line_width = max(2, round(max(photo.size) / 400))
    class_ids = {label: i for i, label in enumerate(labels)}
    out = photo.copy()
    canvas = ImageDraw.Draw(out)
    for result in sorted(results, key=lambda r: r["score"]):  # the most confident drawn last, on top
        box = result["box"]
        x0, y0 = box["xmin"] * scale_x, box["ymin"] * scale_y
        x1, y1 = box["xmax"] * scale_x, box["ymax"] * scale_y
        color = drawing.bright(drawing.class_color(class_ids.get(result["label"], 0)))
        canvas.rectangle((x0, y0, x1, y1), outline=color, width=line_width)
        tag = f"{result['label']} {result['score']:.2f}"
        left, top, right, bottom = canvas.textbbox((0, 0), tag, font=face)
        tag_height = bottom - top + 2 * line_width
        tag_y = y0 - tag_height if y0 - tag_height >= 0 else y0
        canvas.rectangle((x0, tag_y, x0 + right - left + 2 * line_width, tag_y + tag_height), fill=color)
        canvas.text((x0 + line_width, tag_y + line_width - top), tag, font=face, fill=(0, 0, 0))
    return out


class Detection(Task[float]):
    """Its parameter is the score threshold."""

    name = TASK
    cli_name = "detection"
    parameters = PARAMETERS

    def parse_params(self, raw: Mapping[str, Any], model: ModelContext) -> float:
        return parse_params(raw)

    def postprocess(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: float
    ) -> list[dict[str, Any]]:
        found = model.detector.answer(outputs["logits"], outputs["box_regression"], params)
        return to_hf(found, size, model.labels, params)

    def tensors(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: float
    ) -> dict[str, np.ndarray]:
        answer = self.postprocess(outputs, size, model, params)
        corners = ("xmin", "ymin", "xmax", "ymax")
        return {
            "boxes": np.array([[item["box"][c] for c in corners] for item in answer], np.float32).reshape(
                -1, 4
            ),
            "scores": np.array([item["score"] for item in answer], dtype=np.float32),
            "labels": np.array([item["label"] for item in answer], dtype=object),
            "count": np.array(len(answer), dtype=np.int32),
        }

    def tensor_outputs(self, model: ModelContext) -> tuple[TensorOutput, ...]:
        return (
            TensorOutput("boxes", "float32", (-1, 4), "xmin, ymin, xmax, ymax in pixels", padded=True),
            TensorOutput("scores", "float32", (-1,), "each box's score", padded=True),
            TensorOutput("labels", "object", (-1,), "each box's label", padded=True),
            TensorOutput("count", "int32", (), "how many of the rows are detections"),
        )

    def draw(
        self, photo: Image.Image, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: float
    ) -> Image.Image:
        return draw(photo, self.postprocess(outputs, size, model, params), size, model.labels)
