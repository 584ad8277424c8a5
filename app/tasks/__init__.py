"""Tasks: the parameters a task accepts and how its model outputs become the response JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import bad_request
from app.tasks import classification


@dataclass(frozen=True)
class TaskSpec:
    name: str
    route: str
    parameters: tuple[str, ...]
    # (raw parameters, labels) -> validated parameters
    parse_params: Callable[[Mapping[str, Any], list[str]], Any]
    # (model outputs for one image, original image (width, height), labels, parameters) -> response JSON
    postprocess: Callable[[dict[str, np.ndarray], tuple[int, int], list[str], Any], list[dict[str, Any]]]

    def validate(self, raw: Mapping[str, Any], labels: list[str]) -> Any:
        unknown = sorted(set(raw) - set(self.parameters))
        if unknown:
            raise bad_request(
                f"Unknown parameter(s) for {self.name}: {', '.join(unknown)}. "
                f"Accepted: {', '.join(self.parameters)}."
            )
        return self.parse_params(raw, labels)


TASKS: dict[str, TaskSpec] = {
    classification.TASK: TaskSpec(
        name=classification.TASK,
        route="/classify",
        parameters=classification.PARAMETERS,
        parse_params=lambda raw, labels: classification.parse_params(raw, len(labels)),
        postprocess=lambda outputs, size, labels, params: classification.classify(
            outputs["logits"], labels, params
        ),
    ),
}
