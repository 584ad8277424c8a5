"""Image classification: request parameters and logits -> the Hugging Face response schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import bad_request

TASK = "image-classification"
PARAMETERS = ("top_k", "function_to_apply")
FUNCTIONS = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class ClassificationParams:
    top_k: int
    function_to_apply: str


def _int_param(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise bad_request(f"Parameter {name!r} must be an integer, got {value!r}.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise bad_request(f"Parameter {name!r} must be an integer, got {value!r}.")


def parse_params(raw: Mapping[str, Any], num_labels: int) -> ClassificationParams:
    """Validate parameters; defaults are those of transformers' image-classification pipeline."""
    top_k = 5 if raw.get("top_k") is None else _int_param("top_k", raw["top_k"])
    if top_k < 1:
        raise bad_request(f"Parameter 'top_k' must be at least 1, got {top_k}.")
    function = raw.get("function_to_apply")
    if function is None:
        function = "softmax" if num_labels > 1 else "sigmoid"
    if not isinstance(function, str) or function.lower() not in FUNCTIONS:
        raise bad_request(
            f"Parameter 'function_to_apply' must be one of {', '.join(FUNCTIONS)}; got {function!r}."
        )
    return ClassificationParams(top_k=min(top_k, num_labels), function_to_apply=function.lower())


def scores_from_logits(logits: np.ndarray, function: str) -> np.ndarray:
    logits = logits.astype(np.float64)
    if function == "softmax":
        shifted = np.exp(logits - logits.max())
        return shifted / shifted.sum()
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def classify(logits: np.ndarray, labels: list[str], params: ClassificationParams) -> list[dict[str, Any]]:
    """`[{"label": str, "score": float}]`, best first; ties keep label order, like the pipeline."""
    scores = scores_from_logits(logits, params.function_to_apply)
    order = np.argsort(-scores, kind="stable")[: params.top_k]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]
