"""SSDLite object detector on MobileViTv2, as ml-cvnets builds it for its COCO checkpoints.

Feature taps: encoder layer 4 (stride 16) and layer 5 (stride 32), then separable stride-2 "extra"
layers for strides 64, 128 and 256, and a global-pool level. Each level has an SSDLite head whose last
conv emits, per anchor, 4 box offsets followed by the class logits (background at index 0). Outputs are
flattened in (level, y, x, anchor) order. Anchors and decoding live in `app/tasks/detection.py`, in NumPy,
because they do not depend on the weights.

Submodule names mirror ml-cvnets' (`extra_layers.os_64.dw_conv`, `ssd_heads.0.proj_layer`, ...), with
`.convolution` / `.normalization` for cvnets' `.block.conv` / `.block.norm`, and `os_global` for `os_-1`.
"""

from __future__ import annotations

import torch
from torch import nn

from app.nn.configs import MobileViTV2Config, SSDConfig
from app.nn.mobilevitv2 import ConvLayer, MobileViTV2Backbone

COORDINATES = 4


class SeparableConv(nn.Module):
    """Depthwise 3x3 (+BN, no activation), then pointwise 1x1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        pw_norm: bool,
        pw_act: str | None,
        pw_bias: bool,
    ) -> None:
        super().__init__()
        self.dw_conv = ConvLayer(in_channels, in_channels, 3, stride=stride, groups=in_channels)
        self.pw_conv = ConvLayer(in_channels, out_channels, 1, norm=pw_norm, act=pw_act, bias=pw_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw_conv(self.dw_conv(x))


class GlobalLevel(nn.Module):
    """The stride "-1" level: global average pool, 1x1 conv (no bias, no norm), ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.convolution(x.mean(dim=(-2, -1), keepdim=True)))


class SSDHead(nn.Module):
    def __init__(
        self, in_channels: int, proj_channels: int, anchors: int, classes: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.proj_layer = (
            ConvLayer(in_channels, proj_channels, 1, act="relu") if in_channels != proj_channels else None
        )
        out = anchors * (COORDINATES + classes)
        if kernel_size == 3:
            self.loc_cls_layer: nn.Module = SeparableConv(
                proj_channels, out, 1, pw_norm=False, pw_act=None, pw_bias=True
            )
        else:
            self.loc_cls_layer = ConvLayer(proj_channels, out, 1, bias=True, norm=False)
        self.per_anchor = COORDINATES + classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj_layer is not None:
            x = self.proj_layer(x)
        out = self.loc_cls_layer(x)  # (B, anchors * (4 + classes), H, W)
        batch = out.shape[0]
        return out.permute(0, 2, 3, 1).reshape(batch, -1, self.per_anchor)


class MobileViTV2SSD(nn.Module):
    """Returns (class logits (B, anchors, classes), box regression (B, anchors, 4))."""

    output_names = ("logits", "box_regression")

    def __init__(self, cfg: MobileViTV2Config, ssd: SSDConfig, num_classes: int) -> None:
        super().__init__()
        if ssd.output_strides[:2] != (16, 32) or ssd.output_strides[-1] != -1:
            raise ValueError(f"unsupported SSD output strides {ssd.output_strides}")
        self.mobilevitv2 = MobileViTV2Backbone(cfg)
        channels = cfg.stage_channels
        level_in = [channels[4], channels[5]]
        self.extra_layers = nn.ModuleDict()
        previous = channels[5]
        for stride, out in zip(ssd.output_strides[2:], ssd.proj_channels[2:], strict=True):
            if stride == -1:
                self.extra_layers["os_global"] = GlobalLevel(previous, out)
            else:
                self.extra_layers[f"os_{stride}"] = SeparableConv(
                    previous, out, 2, pw_norm=True, pw_act="relu", pw_bias=False
                )
            level_in.append(out)
            previous = out
        self.ssd_heads = nn.ModuleList(
            SSDHead(in_ch, proj, anchors, num_classes, kernel_size=1 if stride == -1 else 3)
            for in_ch, proj, anchors, stride in zip(
                level_in, ssd.proj_channels, ssd.anchors_per_location, ssd.output_strides, strict=True
            )
        )

    def features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        stages = self.mobilevitv2(pixel_values)
        levels = [stages[3], stages[4]]
        for layer in self.extra_layers.values():
            levels.append(layer(levels[-1]))
        return levels

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = torch.cat(
            [head(level) for head, level in zip(self.ssd_heads, self.features(pixel_values), strict=True)], 1
        )
        return outputs[..., COORDINATES:], outputs[..., :COORDINATES]
