"""Preprocessing profiles: which pixels a model gets, chosen per model (docs/preprocessing.md).

- `hf`: the folder's `preprocessor_config.json`, read exactly as `transformers`' `MobileViTImageProcessor`
  reads it. For the `apple/mobilevitv2-*` Hub checkpoints that includes an RGB->BGR flip and a bilinear
  resize, inherited from the MobileViT (v1) port.
- `trained`: what the weights were trained and evaluated with. For MobileViTv2 that is ml-cvnets v0.2+
  (the only pipeline its published weights come from): PIL RGB in [0, 1], no normalisation.
  Classifiers as its ImageNet validation: bicubic, short side to 288 then a 256 crop at 256 px (timm's
  crop_pct 0.888), short side 384 and a 384 crop at 384 px (crop_pct 1.0), torchvision's center crop.
  Segmenters and detectors as its single-image predict path and `mvit convert`: the whole image resized
  to the model's square input, bilinear.

The default is the profile the folder's `manifest.json` records (`preprocessing_profile`, written by
`mvit fetch` and `mvit convert`), else follows its `training_pipeline`: `trained` where it is known,
`hf` for any other checkpoint (a model fine-tuned with `transformers` saw what its image processor
gives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from PIL import Image

from app.intake.preprocess import Preprocessing

Profile = Literal["trained", "hf"]
PROFILES: tuple[Profile, ...] = ("trained", "hf")
# Training pipelines whose evaluation preprocessing is known, by the name a manifest records.
KNOWN_PIPELINES = ("ml-cvnets",)
# ml-cvnets' ImageNet evaluation: the short side an image is resized to, per crop size
# (config/classification/imagenet/mobilevit_v2.yaml, .../finetune_higher_res_in1k/mobilevit_v2.yaml).
CVNETS_SHORT_SIDE = {256: 288, 384: 384}


@dataclass(frozen=True)
class Chosen:
    """A model's preprocessing, the profile it comes from, and why that profile."""

    profile: Profile
    preprocessing: Preprocessing
    reason: str


def trained_preprocessing(task: str, input_size: tuple[int, int]) -> Preprocessing:
    """ml-cvnets' evaluation preprocessing for a MobileViTv2 model of `task` taking `input_size` (h, w)."""
    height, width = input_size
    if task == "image-classification":
        short_side = CVNETS_SHORT_SIDE.get(min(height, width), round(min(height, width) * 288 / 256))
        return Preprocessing(
            resize_shortest_edge=short_side,
            resample=int(Image.Resampling.BICUBIC),
            crop_height_width=(height, width),
            bgr=False,
            crop_rounding="round",
        )
    return Preprocessing(
        resize_height_width=(height, width), resample=int(Image.Resampling.BILINEAR), bgr=False
    )


def choose(
    requested: Literal["auto", "trained", "hf"],
    hf_preprocessing: Preprocessing,
    input_size: tuple[int, int],
    task: str,
    training_pipeline: str | None,
    recorded: str | None = None,
) -> Chosen:
    """The preprocessing to serve: `requested`, or for "auto" the `recorded` profile, else the default
    for `training_pipeline`.

    `hf_preprocessing` is the folder's preprocessor_config.json, and `input_size` the model's (h, w).
    """
    profile, reason = _pick(requested, training_pipeline, recorded)
    preprocessing = hf_preprocessing if profile == "hf" else trained_preprocessing(task, input_size)
    return Chosen(profile, preprocessing, reason)


def _pick(
    requested: Literal["auto", "trained", "hf"], training_pipeline: str | None, recorded: str | None
) -> tuple[Profile, str]:
    if recorded is not None and recorded not in PROFILES:
        raise ValueError(
            f"manifest.json: unknown preprocessing_profile {recorded!r} (known: {', '.join(PROFILES)})"
        )
    if requested != "auto":
        return requested, "requested"
    if recorded is not None:
        return cast(Profile, recorded), "recorded in manifest.json"
    if training_pipeline in KNOWN_PIPELINES:
        return "trained", f"default for weights trained with {training_pipeline}"
    why = (
        f"training pipeline {training_pipeline!r} has no trained profile here"
        if training_pipeline
        else "no training pipeline recorded"
    )
    return "hf", f"default: preprocessor_config.json, {why}"
