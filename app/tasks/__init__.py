"""The TASKS table: one row per task, naming everything the service does for it.

A task's behaviour (its parameters, how outputs become the Hugging Face JSON or named arrays, how the
answer is drawn) lives in its own module; the network that serves it is its row in `app.nn.configs.ARCHITECTURES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from app.errors import InvalidInput, clip
from app.tasks import classification, detection, segmentation

Outputs = dict[str, np.ndarray]  # one image's model outputs, by output name


class ModelContext(Protocol):
    """What postprocessing needs to know about the model that produced the outputs."""

    labels: list[str]
    upsample_align_corners: bool
    detector: detection.Detector


@dataclass(frozen=True)
class TensorOutput:
    """One named array of a task's answer for one image (the Open Inference Protocol's outputs)."""

    name: str
    dtype: str  # a NumPy dtype name; "object" holds text
    shape: tuple[int, ...]  # for one image; -1 where it varies
    description: str
    # Its first axis varies from image to image: a batch pads it to the longest with zeros or "" (the
    # task then also answers a `count` per image).
    padded: bool = False


@dataclass(frozen=True)
class Task:
    name: str  # the Hugging Face pipeline tag
    cli_name: str  # `mvit demo-models --task ...`
    route: str
    parameters: tuple[str, ...]
    # (raw parameters, model) -> validated parameters
    parse_params: Callable[[Mapping[str, Any], ModelContext], Any]
    # (outputs, original image (width, height), model, parameters) -> response JSON
    postprocess: Callable[[Outputs, tuple[int, int], ModelContext, Any], list[dict[str, Any]]]
    # (photo at render size, outputs, original image (width, height), model, parameters) -> annotated photo
    draw: Callable[[Image.Image, Outputs, tuple[int, int], ModelContext, Any], Image.Image]
    # (outputs, original image (width, height), model, parameters) -> the answer as named arrays; the same
    # answer as `postprocess`, in the shapes and types `tensor_outputs` describes
    tensors: Callable[[Outputs, tuple[int, int], ModelContext, Any], dict[str, np.ndarray]]
    tensor_outputs: Callable[[ModelContext], tuple[TensorOutput, ...]]
    # Microseconds of work (a softmax and a top-k) run on the event loop: a thread hop would cost more.
    cheap_postprocess: bool = False

    def validate(self, raw: Mapping[str, Any], model: ModelContext) -> Any:
        unknown = sorted(set(raw) - set(self.parameters))
        if unknown:
            raise InvalidInput(
                f"Unknown parameter(s) for {self.name}: {', '.join(clip(name, 64) for name in unknown)}. "
                f"Accepted: {', '.join(self.parameters)}."
            )
        return self.parse_params(raw, model)


def _detections(
    outputs: Outputs, size: tuple[int, int], model: ModelContext, threshold: float
) -> list[dict[str, Any]]:
    found = model.detector.detect(outputs["logits"], outputs["box_regression"], threshold)
    return detection.to_hf(found, size, model.labels, threshold)


def _classification_tensors(
    outputs: Outputs, size: tuple[int, int], model: ModelContext, params: Any
) -> dict[str, np.ndarray]:
    answer = classification.classify(outputs["logits"], model.labels, params)
    return {
        "labels": np.array([item["label"] for item in answer], dtype=object),
        "scores": np.array([item["score"] for item in answer], dtype=np.float32),
    }


def _detection_tensors(
    outputs: Outputs, size: tuple[int, int], model: ModelContext, threshold: float
) -> dict[str, np.ndarray]:
    answer = _detections(outputs, size, model, threshold)
    corners = ("xmin", "ymin", "xmax", "ymax")
    return {
        "boxes": np.array([[item["box"][c] for c in corners] for item in answer], np.float32).reshape(-1, 4),
        "scores": np.array([item["score"] for item in answer], dtype=np.float32),
        "labels": np.array([item["label"] for item in answer], dtype=object),
        "count": np.array(len(answer), dtype=np.int32),
    }


def _segmentation_dtype(model: ModelContext) -> str:
    return "uint8" if len(model.labels) <= 256 else "int32"


def _segmentation_tensors(
    outputs: Outputs, size: tuple[int, int], model: ModelContext, params: Any
) -> dict[str, np.ndarray]:
    width, height = size
    ids = segmentation.label_map(outputs["logits"], height, width, model.upsample_align_corners)
    return {"label_ids": ids.astype(_segmentation_dtype(model), copy=False)}


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name=classification.TASK,
            cli_name="classification",
            route="/classify",
            parameters=classification.PARAMETERS,
            parse_params=lambda raw, model: classification.parse_params(raw, len(model.labels)),
            postprocess=lambda outputs, size, model, params: classification.classify(
                outputs["logits"], model.labels, params
            ),
            draw=lambda photo, outputs, size, model, params: classification.draw(
                photo, classification.classify(outputs["logits"], model.labels, params)
            ),
            tensors=_classification_tensors,
            tensor_outputs=lambda model: (
                TensorOutput("labels", "object", (-1,), "the top_k labels, best first"),
                TensorOutput("scores", "float32", (-1,), "their scores (function_to_apply)"),
            ),
            cheap_postprocess=True,
        ),
        Task(
            name=segmentation.TASK,
            cli_name="segmentation",
            route="/segment",
            parameters=segmentation.PARAMETERS,
            parse_params=lambda raw, model: segmentation.parse_params(raw),
            postprocess=lambda outputs, size, model, params: segmentation.segment(
                outputs["logits"], size, model.labels, model.upsample_align_corners
            ),
            draw=lambda photo, outputs, size, model, params: segmentation.draw(
                photo,
                segmentation.label_map(
                    outputs["logits"], photo.height, photo.width, model.upsample_align_corners
                ),
                model.labels,
            ),
            tensors=_segmentation_tensors,
            tensor_outputs=lambda model: (
                TensorOutput(
                    "label_ids",
                    _segmentation_dtype(model),
                    (-1, -1),
                    "the class id of every pixel, at the image's size (ids index the model's labels)",
                ),
            ),
        ),
        Task(
            name=detection.TASK,
            cli_name="detection",
            route="/detect",
            parameters=detection.PARAMETERS,
            parse_params=lambda raw, model: detection.parse_params(raw),
            postprocess=_detections,
            draw=lambda photo, outputs, size, model, threshold: detection.draw(
                photo, _detections(outputs, size, model, threshold), size, model.labels
            ),
            tensors=_detection_tensors,
            tensor_outputs=lambda model: (
                TensorOutput("boxes", "float32", (-1, 4), "xmin, ymin, xmax, ymax in pixels", padded=True),
                TensorOutput("scores", "float32", (-1,), "each box's score", padded=True),
                TensorOutput("labels", "object", (-1,), "each box's label", padded=True),
                TensorOutput("count", "int32", (), "how many of the rows are detections"),
            ),
        ),
    )
}
TASK_BY_CLI_NAME = {task.cli_name: task for task in TASKS.values()}
