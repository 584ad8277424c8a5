"""Image classification: request parameters and logits -> the Hugging Face response schema."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from app.errors import InvalidInput, shown
from app.tasks import drawing
from app.tasks.base import ModelContext, Outputs, Task, TensorOutput

TASK = "image-classification"
PARAMETERS = ("top_k", "function_to_apply")
FUNCTIONS = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class ClassificationParams:
    top_k: int
    function_to_apply: str


def _int_param(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"Parameter {shown(name)} must be an integer, got {shown(value)}.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidInput(f"Parameter {shown(name)} must be an integer, got {shown(value)}.")


def parse_params(raw: Mapping[str, Any], num_labels: int) -> ClassificationParams:
    """Validate parameters; defaults are those of transformers' image-classification pipeline."""
    top_k = 5 if raw.get("top_k") is None else _int_param("top_k", raw["top_k"])
    if top_k < 1:
        raise InvalidInput(f"Parameter 'top_k' must be at least 1, got {top_k}.")
    function = raw.get("function_to_apply")
    if function is None:
        function = "softmax" if num_labels > 1 else "sigmoid"
    if not isinstance(function, str) or function.lower() not in FUNCTIONS:
        raise InvalidInput(
            f"Parameter 'function_to_apply' must be one of {', '.join(FUNCTIONS)}; got {shown(function)}."
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


def draw(photo: Image.Image, results: Sequence[dict[str, Any]]) -> Image.Image:
    """The top-k labels with score bars, top left."""
    size = drawing.text_size(photo)
    face = drawing.text_font(size)
    line = round(size * 1.5)
    pad = size // 2
    bar_width = max(4 * size, photo.width // 4)
    texts = [f"{r['label'][:40]}  {r['score']:.1%}" for r in results]
    text_width = max((round(face.getlength(t)) for t in texts), default=0)
    panel_width = min(photo.width, pad * 3 + max(text_width, bar_width))
    overlay = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    canvas = ImageDraw.Draw(overlay)
    canvas.rectangle(
        (0, 0, panel_width, pad + len(results) * (line + pad // 2 + 4) + pad), fill=drawing.PANEL
    )
    y = pad
    for text, result in zip(texts, results, strict=True):
        canvas.text((pad, y), text, font=face, fill=drawing.TEXT)
        y += line
        score = min(max(float(result["score"]), 0.0), 1.0)
        canvas.rectangle((pad, y, pad + bar_width, y + pad // 2 + 2), fill=(255, 255, 255, 60))
        canvas.rectangle((pad, y, pad + round(bar_width * score), y + pad // 2 + 2), fill=(80, 200, 120, 255))
        y += pad // 2 + 4
    return Image.alpha_composite(photo.convert("RGBA"), overlay).convert("RGB")


class Classification(Task[ClassificationParams]):
    name = TASK
    cli_name = "classification"
    parameters = PARAMETERS
    cheap_postprocess = True

    def parse_params(self, raw: Mapping[str, Any], model: ModelContext) -> ClassificationParams:
        return parse_params(raw, len(model.labels))

    def postprocess(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: ClassificationParams
    ) -> list[dict[str, Any]]:
        return classify(outputs["logits"], model.labels, params)

    def tensors(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: ClassificationParams
    ) -> dict[str, np.ndarray]:
        answer = self.postprocess(outputs, size, model, params)
        return {
            "labels": np.array([item["label"] for item in answer], dtype=object),
            "scores": np.array([item["score"] for item in answer], dtype=np.float32),
        }

    def tensor_outputs(self, model: ModelContext) -> tuple[TensorOutput, ...]:
        return (
            TensorOutput("labels", "object", (-1,), "the top_k labels, best first"),
            TensorOutput("scores", "float32", (-1,), "their scores (function_to_apply)"),
        )

    def draw(
        self,
        photo: Image.Image,
        outputs: Outputs,
        size: tuple[int, int],
        model: ModelContext,
        params: ClassificationParams,
    ) -> Image.Image:
        return draw(photo, self.postprocess(outputs, size, model, params))
