"""Torch-free descriptions of the networks: their config.json fields and the ARCHITECTURES table.

Everything that dispatches on an architecture (reading a model folder, building its network, writing demo
and converted folders) reads the one row here; the task's own behaviour lives in `app.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

ACTIVATIONS = ("swish", "silu", "relu", "gelu")


def config_fields(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The values of dataclass `cls`'s fields found in a config.json dict; JSON lists become tuples."""

    def frozen(value: Any) -> Any:
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    return {f.name: frozen(config[f.name]) for f in fields(cls) if f.name in config}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% below `value`."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class MobileViTV2Config:
    """The architecture fields of a Hugging Face `MobileViTV2Config` (config.json)."""

    width_multiplier: float = 1.0
    num_channels: int = 3
    patch_size: int = 2
    expand_ratio: float = 2.0
    hidden_act: str = "swish"
    conv_kernel_size: int = 3
    output_stride: int = 32
    layer_norm_eps: float = 1e-5
    n_attn_blocks: tuple[int, int, int] = (2, 4, 3)
    base_attn_unit_dims: tuple[int, int, int] = (128, 192, 256)
    ffn_multiplier: int = 2
    aspp_out_channels: int = 512
    atrous_rates: tuple[int, int, int] = (6, 12, 18)
    # ml-cvnets dilates the local 3x3 depthwise conv of a dilated stage; transformers does not.
    # Checkpoints converted from cvnets set this so they reproduce cvnets.
    dilate_local_conv: bool = False

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> MobileViTV2Config:
        values = config_fields(cls, config)
        if values.get("hidden_act", "swish") not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {values['hidden_act']!r}")
        return cls(**values)

    @property
    def stage_channels(self) -> tuple[int, int, int, int, int, int]:
        """Output channels of the stem and of encoder layers 1..5."""
        w = self.width_multiplier
        return (
            make_divisible(min(max(32 * w, 16), 64), divisor=8, min_value=16),
            make_divisible(64 * w, divisor=16),
            make_divisible(128 * w, divisor=8),
            make_divisible(256 * w, divisor=8),
            make_divisible(384 * w, divisor=8),
            make_divisible(512 * w, divisor=8),
        )

    @property
    def attn_unit_dims(self) -> tuple[int, int, int]:
        return tuple(make_divisible(d * self.width_multiplier, divisor=8) for d in self.base_attn_unit_dims)


@dataclass(frozen=True)
class SSDConfig:
    """Detection settings, stored in config.json beside the backbone's fields (cvnets' COCO defaults)."""

    output_strides: tuple[int, ...] = (16, 32, 64, 128, 256, -1)
    proj_channels: tuple[int, ...] = (512, 256, 256, 128, 128, 64)
    anchor_aspect_ratios: tuple[tuple[int, ...], ...] = ((2, 3), (2, 3), (2, 3), (2, 3), (2, 3), (2,))
    anchor_min_scale: float = 0.1
    anchor_max_scale: float = 1.05
    center_variance: float = 0.1
    size_variance: float = 0.2
    conf_threshold: float = 0.01
    nms_iou_threshold: float = 0.5
    top_k_per_class: int = 400
    objects_per_image: int = 200

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SSDConfig:
        return cls(**config_fields(cls, config))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def anchors_per_location(self) -> tuple[int, ...]:
        return tuple(2 + 2 * len(ratios) for ratios in self.anchor_aspect_ratios)


@dataclass(frozen=True)
class Architecture:
    """One network a model folder can hold, named as config.json's `architectures` names it."""

    name: str
    task: str  # the Hugging Face pipeline tag it serves, a key of app.tasks.TASKS
    network: str  # the nn.Module class in app.nn.<module>, imported only when built
    head_names: tuple[str, ...]  # the last layers, scaled up by demo weights so logits spread out
    dataset: str  # the label set of the demo models (app/labels/<dataset>.txt)
    image_size: int  # the default input size
    head: str = ""  # in folder names: mobilevitv2-1.0-voc-deeplabv3-512-random, cvnets-...-coco-ssdlite
    head_config: type[SSDConfig] | None = None  # the head's own config.json fields, if it has any
    output_stride: int = 32
    # How demo models turn a photo into the input: "crop" (short side to `short_side_ratio` times the size,
    # center crop, as the Hub checkpoints) or "whole" (the photo resized to size x size, as ml-cvnets).
    demo_resize: str = "crop"
    short_side_ratio: float = 288 / 256
    # How demo weights are calibrated on procedural photos or scenes (app/tools/calibrate.py).
    demo_calibration: Literal["whiten", "regions", "boxes"] = "whiten"  # app/tools/calibrate.py


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            name="MobileViTV2ForImageClassification",
            task="image-classification",
            network="mobilevitv2:MobileViTV2ForImageClassification",
            head_names=("classifier",),
            dataset="imagenet1k",
            image_size=256,
        ),
        Architecture(
            name="MobileViTV2ForSemanticSegmentation",
            task="image-segmentation",
            network="mobilevitv2:MobileViTV2ForSemanticSegmentation",
            head_names=("segmentation_head.classifier.convolution",),
            dataset="voc",
            image_size=512,
            head="deeplabv3",
            output_stride=16,
            short_side_ratio=1.0,
            demo_calibration="regions",
        ),
        Architecture(  # this project's own: no transformers port exists
            name="MobileViTV2SSD",
            task="object-detection",
            network="ssd:MobileViTV2SSD",
            head_names=(
                *(f"ssd_heads.{i}.loc_cls_layer.pw_conv.convolution" for i in range(5)),
                "ssd_heads.5.loc_cls_layer.convolution",
            ),
            dataset="coco",
            image_size=320,
            head="ssdlite",
            head_config=SSDConfig,
            demo_calibration="boxes",
            demo_resize="whole",
        ),
    )
}
ARCHITECTURE_BY_TASK = {a.task: a for a in ARCHITECTURES.values()}
