"""Tasks: the parameters a task accepts and how its model outputs become the response JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.errors import bad_request
from app.tasks import classification, detection, segmentation


class ModelContext(Protocol):
    """What postprocessing needs to know about the model that produced the outputs."""

    labels: list[str]
    upsample_align_corners: bool
    detector: detection.Detector


@dataclass(frozen=True)
class TaskSpec:
    name: str
    route: str
    parameters: tuple[str, ...]
    # (raw parameters, model) -> validated parameters
    parse_params: Callable[[Mapping[str, Any], ModelContext], Any]
    # (one image's model outputs, original image (width, height), model, parameters) -> response JSON
    postprocess: Callable[[dict[str, np.ndarray], tuple[int, int], ModelContext, Any], list[dict[str, Any]]]
    # Microseconds of work (a softmax and a top-k) run on the event loop: a thread hop would cost more.
    cheap_postprocess: bool = False

    def validate(self, raw: Mapping[str, Any], model: ModelContext) -> Any:
        unknown = sorted(set(raw) - set(self.parameters))
        if unknown:
            raise bad_request(
                f"Unknown parameter(s) for {self.name}: {', '.join(unknown)}. "
                f"Accepted: {', '.join(self.parameters)}."
            )
        return self.parse_params(raw, model)


TASKS: dict[str, TaskSpec] = {
    classification.TASK: TaskSpec(
        name=classification.TASK,
        route="/classify",
        parameters=classification.PARAMETERS,
        parse_params=lambda raw, model: classification.parse_params(raw, len(model.labels)),
        postprocess=lambda outputs, size, model, params: classification.classify(
            outputs["logits"], model.labels, params
        ),
        cheap_postprocess=True,
    ),
    segmentation.TASK: TaskSpec(
        name=segmentation.TASK,
        route="/segment",
        parameters=segmentation.PARAMETERS,
        parse_params=lambda raw, model: segmentation.parse_params(raw),
        postprocess=lambda outputs, size, model, params: segmentation.segment(
            outputs["logits"], size, model.labels, model.upsample_align_corners
        ),
    ),
    detection.TASK: TaskSpec(
        name=detection.TASK,
        route="/detect",
        parameters=detection.PARAMETERS,
        parse_params=lambda raw, model: detection.parse_params(raw),
        postprocess=lambda outputs, size, model, threshold: detection.to_hf(
            model.detector.detect(outputs["logits"], outputs["box_regression"], threshold),
            size,
            model.labels,
            threshold,
        ),
    ),
}
