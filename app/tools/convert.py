"""Apple ml-cvnets checkpoints -> this project's (Hugging Face-format) model folders.

cvnets saves `model.state_dict()` under its own module names (`encoder.layer_3.1.local_rep.0.block.conv`,
`seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.norm`, ...). `cvnets_to_hf_keys` renames them
to the Hugging Face layout that `app/nn/mobilevitv2.py` uses; the training-only auxiliary segmentation
head is dropped. The width, the task and the number of classes are read off the tensors themselves.

cvnets' conventions differ from the Hub's converted checkpoints, and the folder records them:
RGB input in [0, 1] (no BGR flip), the dilated local conv (`dilate_local_conv`), and segmentation logits
upsampled with `align_corners=True` (`manifest.json`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from app.errors import CheckpointError
from app.intake.preprocess import Preprocessing
from app.intake.profiles import CVNETS_SHORT_SIDE
from app.labels import labels_for
from app.nn.configs import ARCHITECTURE_BY_TASK
from app.repository.writer import hf_config, write_model_folder

T = TypeVar("T")

# Stem channels for each published width: make_divisible(clip(32 * w, 16, 64), 8).
_WIDTH_BY_STEM = {16: 0.5, 24: 0.75, 32: 1.0, 40: 1.25, 48: 1.5, 56: 1.75, 64: 2.0}
_DROPPED = re.compile(r"^seg_head\.aux_head\.")

_CONV = r"block\.(conv|norm)\.(.+)"
_PART = {"conv": "convolution", "norm": "normalization"}
_IR = {"exp_1x1": "expand_1x1", "conv_3x3": "conv_3x3", "red_1x1": "reduce_1x1"}


def _conv(prefix: str, match: re.Match[str], first: int) -> str:
    return f"{prefix}.{_PART[match.group(first)]}.{match.group(first + 1)}"


def _rename_encoder(key: str) -> str | None:
    """`conv_1...` / `layer_N...` (no `encoder.` prefix) -> the HF name, or None if unknown."""
    if m := re.fullmatch(r"conv_1\." + _CONV, key):
        return _conv("mobilevitv2.conv_stem", m, 1)
    m = re.fullmatch(r"layer_(\d)\.(\d+)\.(.+)", key)
    if not m:
        return None
    stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    base = f"mobilevitv2.encoder.layer.{stage - 1}"
    if stage <= 2:  # MobileNetV2 stages: layer_N.i.block.{exp_1x1,conv_3x3,red_1x1}
        if ir := re.fullmatch(r"block\.(exp_1x1|conv_3x3|red_1x1)\." + _CONV, rest):
            return _conv(f"{base}.layer.{block}.{_IR[ir.group(1)]}", ir, 2)
        return None
    if block == 0:  # stride-2 inverted residual that opens a MobileViT stage
        if ir := re.fullmatch(r"block\.(exp_1x1|conv_3x3|red_1x1)\." + _CONV, rest):
            return _conv(f"{base}.downsampling_layer.{_IR[ir.group(1)]}", ir, 2)
        return None
    if block != 1:
        return None
    if lr := re.fullmatch(r"local_rep\.([01])\." + _CONV, rest):
        return _conv(f"{base}.{'conv_kxk' if lr.group(1) == '0' else 'conv_1x1'}", lr, 2)
    if cp := re.fullmatch(r"conv_proj\." + _CONV, rest):
        return _conv(f"{base}.conv_projection", cp, 1)
    if gr := re.fullmatch(r"global_rep\.(\d+)\.(weight|bias)", rest):  # the final LayerNorm2D
        return f"{base}.layernorm.{gr.group(2)}"
    gr = re.fullmatch(r"global_rep\.(\d+)\.(.+)", rest)
    if not gr:
        return None
    layer, inner = f"{base}.transformer.layer.{gr.group(1)}", gr.group(2)
    table = {
        r"pre_norm_attn\.0\.(weight|bias)": "layernorm_before.{0}",
        r"pre_norm_attn\.1\.qkv_proj\.block\.conv\.(weight|bias)": "attention.qkv_proj.convolution.{0}",
        r"pre_norm_attn\.1\.out_proj\.block\.conv\.(weight|bias)": "attention.out_proj.convolution.{0}",
        r"pre_norm_ffn\.0\.(weight|bias)": "layernorm_after.{0}",
        r"pre_norm_ffn\.1\.block\.conv\.(weight|bias)": "ffn.conv1.convolution.{0}",
        r"pre_norm_ffn\.3\.block\.conv\.(weight|bias)": "ffn.conv2.convolution.{0}",
    }
    for pattern, target in table.items():
        if t := re.fullmatch(pattern, inner):
            return f"{layer}.{target.format(t.group(1))}"
    return None


def _rename_head(key: str) -> str | None:
    if m := re.fullmatch(r"classifier\.1\.(weight|bias)", key):
        return f"classifier.{m.group(1)}"
    if m := re.fullmatch(r"seg_head\.aspp\.aspp_layer\.convs\.([0-3])\." + _CONV, key):
        return _conv(f"segmentation_head.aspp.convs.{m.group(1)}", m, 2)
    if m := re.fullmatch(r"seg_head\.aspp\.aspp_layer\.convs\.4\.aspp_pool\.conv_1x1\." + _CONV, key):
        return _conv("segmentation_head.aspp.convs.4.conv_1x1", m, 1)
    if m := re.fullmatch(r"seg_head\.aspp\.aspp_layer\.project\." + _CONV, key):
        return _conv("segmentation_head.aspp.project", m, 1)
    if m := re.fullmatch(r"seg_head\.classifier\.block\.conv\.(weight|bias)", key):
        return f"segmentation_head.classifier.convolution.{m.group(1)}"
    return None


def _rename_detection(key: str) -> str | None:
    """SSD extra layers and heads keep cvnets' module names, minus `.block` and with `os_global`."""
    if not key.startswith(("extra_layers.", "ssd_heads.")):
        return None
    key = key.replace("extra_layers.os_-1.1.", "extra_layers.os_global.")
    return key.replace(".block.conv.", ".convolution.").replace(".block.norm.", ".normalization.")


def cvnets_to_hf_keys(state: Mapping[str, T]) -> dict[str, T]:
    """Rename a cvnets MobileViTv2 classification or DeepLabV3 state dict; refuse unknown keys."""
    renamed: dict[str, T] = {}
    unknown = []
    for key, value in state.items():
        if _DROPPED.match(key):
            continue
        encoder_key = key.removeprefix("encoder.")
        new = _rename_head(key) or _rename_detection(key) or _rename_encoder(encoder_key)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise CheckpointError(
            f"not a cvnets MobileViTv2 classification, DeepLabV3 or SSD checkpoint: {len(unknown)} unknown keys ({shown})"
        )
    return renamed


def describe_cvnets_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Task, width, number of classes, read off the (renamed) tensors' shapes."""
    stem = state.get("mobilevitv2.conv_stem.convolution.weight")
    if stem is None or stem.shape[0] not in _WIDTH_BY_STEM:
        raise CheckpointError(
            "cannot tell the MobileViTv2 width: the stem conv is missing or has an unknown size"
        )
    if "classifier.weight" in state:
        task, classes = "image-classification", int(state["classifier.weight"].shape[0])
    elif "segmentation_head.classifier.convolution.weight" in state:
        task, classes = (
            "image-segmentation",
            int(state["segmentation_head.classifier.convolution.weight"].shape[0]),
        )
    elif "ssd_heads.0.loc_cls_layer.pw_conv.convolution.weight" in state:
        # Level 0 has 6 anchors, each with 4 box offsets and then the class logits.
        out = int(state["ssd_heads.0.loc_cls_layer.pw_conv.convolution.weight"].shape[0])
        task, classes = "object-detection", out // 6 - 4
    else:
        raise CheckpointError("the checkpoint has no classifier, segmentation head or SSD heads")
    return {"task": task, "width": _WIDTH_BY_STEM[int(stem.shape[0])], "num_classes": classes}


def write_converted(
    state: Mapping[str, Any],
    out_dir: Path,
    source: str,
    image_size: int | None = None,
    resample: int | None = None,
    name: str | None = None,
) -> Path:
    """Write a renamed cvnets state dict as a model folder and return its path.

    `resample` (a PIL filter) defaults to bilinear, as cvnets' single-image predict paths resize, for
    detection and segmentation, and to bicubic, as its ImageNet validation does, for classification.
    (cvnets' COCO validation dataset resizes bicubic: pass `resample=3` to match that instead.)
    """
    import torch

    info = describe_cvnets_state(state)
    architecture = ARCHITECTURE_BY_TASK[info["task"]]
    dataset, labels = labels_for(info["num_classes"])
    size = image_size or architecture.image_size
    if architecture.task == "image-classification":
        # cvnets' ImageNet evaluation: short side to 288 for a 256 crop, 384 for 384 (bicubic), center crop.
        preprocessing = Preprocessing(
            resize_shortest_edge=CVNETS_SHORT_SIDE.get(size, size * 288 // 256),
            resample=resample or 3,
            crop_height_width=(size, size),
            bgr=False,
        )
    else:
        # The whole photo resized to size x size, bilinear, RGB, as cvnets' detection predict does; for
        # segmentation the masks then cover the full photo.
        preprocessing = Preprocessing(resize_height_width=(size, size), resample=resample or 2, bgr=False)
    config = hf_config(info["width"], size, labels, architecture.name)
    config["dilate_local_conv"] = True
    if architecture.output_stride != 32:
        config["output_stride"] = architecture.output_stride
    if architecture.head_config is not None:
        config.update(architecture.head_config().to_dict())
    kind = architecture.head or str(size)
    name = name or f"cvnets-mobilevitv2-{info['width']}-{dataset}-{kind}"
    manifest = {
        "id": name,
        "task": info["task"],
        "random_weights": False,
        "source_format": "cvnets",
        "source": source,
        "converted_by": "mvit convert",
        "training_pipeline": "ml-cvnets",
        "upsample_align_corners": True,
    }
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in state.items()}
    return write_model_folder(out_dir / name, config, preprocessing.to_hf_config(), manifest, tensors)


def convert_cvnets_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    image_size: int | None = None,
    resample: int | None = None,
    *,
    name: str | None = None,
    source: str | None = None,
) -> Path:
    """`.pt` (loaded with weights_only=True) or `.safetensors` with cvnets keys -> a model folder."""
    from app.nn.build import load_state_dict

    state = cvnets_to_hf_keys(load_state_dict(checkpoint))
    return write_converted(state, out_dir, source or str(checkpoint), image_size, resample, name)
