"""What a task is: one object per task (in the spirit of LitServe's `LitAPI`) that turns one image's model
outputs into the Hugging Face answer, the Open Inference Protocol's named arrays, or a drawing.

The server knows tasks only through this class; where their routes are is the API's business
(`app/api/inference.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image

from app.errors import InvalidInput, clip

if TYPE_CHECKING:
    from app.tasks.detection import Detector

Outputs = dict[str, np.ndarray]  # one image's model outputs, by output name
Params = TypeVar("Params")


class ModelContext(Protocol):
    """What postprocessing needs to know about the model that produced the outputs."""

    labels: list[str]
    upsample_align_corners: bool
    detector: Detector


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


class Task(ABC, Generic[Params]):
    """One task. `size` is always the original image's (width, height)."""

    name: ClassVar[str]  # the Hugging Face pipeline tag
    cli_name: ClassVar[str]  # `mvit demo-models --task ...`
    parameters: ClassVar[tuple[str, ...]]
    # Microseconds of work (a softmax and a top-k), run on the event loop: a thread hop would cost more.
    cheap_postprocess: ClassVar[bool] = False

    def validate(self, raw: Mapping[str, Any], model: ModelContext) -> Params:
        unknown = sorted(set(raw) - set(self.parameters))
        if unknown:
            raise InvalidInput(
                f"Unknown parameter(s) for {self.name}: {', '.join(clip(name, 64) for name in unknown)}. "
                f"Accepted: {', '.join(self.parameters)}."
            )
        return self.parse_params(raw, model)

    @abstractmethod
    def parse_params(self, raw: Mapping[str, Any], model: ModelContext) -> Params:
        """The request's parameters, validated, with the Hugging Face pipeline's defaults."""

    @abstractmethod
    def postprocess(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: Params
    ) -> list[dict[str, Any]]:
        """The Hugging Face answer's JSON."""

    @abstractmethod
    def tensors(
        self, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: Params
    ) -> dict[str, np.ndarray]:
        """The same answer as `postprocess`, as the named arrays `tensor_outputs` describes."""

    @abstractmethod
    def tensor_outputs(self, model: ModelContext) -> tuple[TensorOutput, ...]: ...

    @abstractmethod
    def draw(
        self, photo: Image.Image, outputs: Outputs, size: tuple[int, int], model: ModelContext, params: Params
    ) -> Image.Image:
        """The answer drawn on `photo` (the image at render size)."""
