"""MobileViTv2 (Mehta & Rastegari, 2022) in plain PyTorch.

Module attribute names follow the Hugging Face `transformers` checkpoint layout
(`mobilevitv2.encoder.layer.2.transformer.layer.0.attention.qkv_proj.convolution.weight`, ...), so a
Hugging Face `model.safetensors` / `pytorch_model.bin` loads with a strict `load_state_dict` and no key
mapping. Only inference is supported: dropout is left out.

Patches are unfolded and folded with reshape/permute instead of `nn.functional.unfold/fold`, because
col2im does not export to ONNX at opset 17.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from app.nn.configs import MobileViTV2Config, make_divisible

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


class ConvLayer(nn.Module):
    """Conv2d, then optional BatchNorm, then optional activation ("same" padding)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.normalization = nn.BatchNorm2d(out_channels) if norm else None
        self.activation = _ACTIVATIONS[act]() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convolution(x)
        if self.normalization is not None:
            x = self.normalization(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear reduce, residual when shapes allow."""

    def __init__(
        self, cfg: MobileViTV2Config, in_channels: int, out_channels: int, stride: int, dilation: int = 1
    ) -> None:
        super().__init__()
        hidden = make_divisible(round(in_channels * cfg.expand_ratio), 8)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand_1x1 = ConvLayer(in_channels, hidden, 1, act=cfg.hidden_act)
        self.conv_3x3 = ConvLayer(
            hidden, hidden, 3, stride=stride, groups=hidden, dilation=dilation, act=cfg.hidden_act
        )
        self.reduce_1x1 = ConvLayer(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce_1x1(self.conv_3x3(self.expand_1x1(x)))
        return x + y if self.use_residual else y


class MobileNetStage(nn.Module):
    def __init__(
        self, cfg: MobileViTV2Config, in_channels: int, out_channels: int, stride: int, num_blocks: int
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            InvertedResidual(
                cfg, in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return x


class LinearSelfAttention(nn.Module):
    """Separable self-attention: one context vector per patch pixel, linear in the number of patches."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.qkv_proj = ConvLayer(dim, 1 + 2 * dim, 1, bias=True, norm=False)
        self.out_proj = ConvLayer(dim, dim, 1, bias=True, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, dim, pixels_per_patch, num_patches)
        query, key, value = torch.split(self.qkv_proj(x), [1, self.dim, self.dim], dim=1)
        scores = torch.softmax(query, dim=-1)
        context = (key * scores).sum(dim=-1, keepdim=True)
        return self.out_proj(torch.relu(value) * context)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.conv1 = ConvLayer(dim, hidden, 1, bias=True, norm=False, act=act)
        self.conv2 = ConvLayer(hidden, dim, 1, bias=True, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: MobileViTV2Config, dim: int) -> None:
        super().__init__()
        ffn_dim = int(cfg.ffn_multiplier * dim // 16 * 16)
        self.layernorm_before = nn.GroupNorm(1, dim, eps=cfg.layer_norm_eps)
        self.attention = LinearSelfAttention(dim)
        self.layernorm_after = nn.GroupNorm(1, dim, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(dim, ffn_dim, cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.ffn(self.layernorm_after(x))


class Transformer(nn.Module):
    def __init__(self, cfg: MobileViTV2Config, dim: int, depth: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(cfg, dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return x


class MobileViTBlock(nn.Module):
    """Optional stride-2 inverted residual, local depthwise conv, then a patch transformer."""

    def __init__(
        self,
        cfg: MobileViTV2Config,
        in_channels: int,
        out_channels: int,
        attn_dim: int,
        depth: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        # A dilated stage keeps its resolution: the downsampling block runs at stride 1 instead.
        self.downsampling_layer = InvertedResidual(
            cfg,
            in_channels,
            out_channels,
            stride=1 if dilation > 1 else 2,
            dilation=dilation // 2 if dilation > 1 else 1,
        )
        self.conv_kxk = ConvLayer(
            out_channels,
            out_channels,
            cfg.conv_kernel_size,
            groups=out_channels,
            dilation=dilation if cfg.dilate_local_conv else 1,
            act=cfg.hidden_act,
        )
        self.conv_1x1 = ConvLayer(out_channels, attn_dim, 1, norm=False)
        self.transformer = Transformer(cfg, attn_dim, depth)
        self.layernorm = nn.GroupNorm(1, attn_dim, eps=cfg.layer_norm_eps)
        self.conv_projection = ConvLayer(attn_dim, out_channels, 1)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, p*p, H/p * W/p); the same layout as `nn.functional.unfold`."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c, p * p, (h // p) * (w // p))

    def fold(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, c = x.shape[:2]
        p = self.patch_size
        x = x.reshape(b, c, p, p, h // p, w // p).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsampling_layer(x)
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            # As ml-cvnets does: grow the map to a multiple of the patch size. (transformers' fold
            # instead silently zero-fills the last row/column; the two agree when H/32 and W/32 are even.)
            h, w = -(-h // p) * p, -(-w // p) * p
            x = nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        x = self.conv_1x1(self.conv_kxk(x))
        x = self.layernorm(self.transformer(self.unfold(x)))
        return self.conv_projection(self.fold(x, h, w))


class MobileViTV2Encoder(nn.Module):
    def __init__(self, cfg: MobileViTV2Config) -> None:
        super().__init__()
        if cfg.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {cfg.output_stride}")
        c = cfg.stage_channels
        a = cfg.attn_unit_dims
        dilation_4 = 2 if cfg.output_stride == 8 else 1
        dilation_5 = dilation_4 * 2 if cfg.output_stride in (8, 16) else 1
        self.layer = nn.ModuleList(
            [
                MobileNetStage(cfg, c[0], c[1], stride=1, num_blocks=1),
                MobileNetStage(cfg, c[1], c[2], stride=2, num_blocks=2),
                MobileViTBlock(cfg, c[2], c[3], a[0], cfg.n_attn_blocks[0]),
                MobileViTBlock(cfg, c[3], c[4], a[1], cfg.n_attn_blocks[1], dilation=dilation_4),
                MobileViTBlock(cfg, c[4], c[5], a[2], cfg.n_attn_blocks[2], dilation=dilation_5),
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.layer:
            x = stage(x)
            features.append(x)
        return features


class MobileViTV2Backbone(nn.Module):
    """Stem + encoder. `forward` returns the output of each of the five encoder layers (strides 2..32)."""

    def __init__(self, cfg: MobileViTV2Config) -> None:
        super().__init__()
        self.config = cfg
        self.conv_stem = ConvLayer(cfg.num_channels, cfg.stage_channels[0], 3, stride=2, act=cfg.hidden_act)
        self.encoder = MobileViTV2Encoder(cfg)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(self.conv_stem(pixel_values))


class MobileViTV2ForImageClassification(nn.Module):
    """Backbone, global average pool, linear classifier. Returns logits (B, num_labels)."""

    def __init__(self, cfg: MobileViTV2Config, num_labels: int) -> None:
        super().__init__()
        self.mobilevitv2 = MobileViTV2Backbone(cfg)
        self.classifier = nn.Linear(cfg.stage_channels[5], num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        last = self.mobilevitv2(pixel_values)[-1]
        return self.classifier(last.mean(dim=(-2, -1)))


class ASPPPooling(nn.Module):
    """Image-level branch of ASPP: global average, 1x1 conv, broadcast back to the map size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_1x1 = ConvLayer(in_channels, out_channels, 1, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv_1x1(x.mean(dim=(-2, -1), keepdim=True))
        return nn.functional.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; concatenated, projected."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                ConvLayer(in_channels, out_channels, 1, act="relu"),
                *(ConvLayer(in_channels, out_channels, 3, dilation=rate, act="relu") for rate in rates),
                ASPPPooling(in_channels, out_channels),
            ]
        )
        self.project = ConvLayer((len(rates) + 2) * out_channels, out_channels, 1, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3Head(nn.Module):
    def __init__(self, cfg: MobileViTV2Config, num_labels: int) -> None:
        super().__init__()
        self.aspp = ASPP(cfg.stage_channels[5], cfg.aspp_out_channels, cfg.atrous_rates)
        self.classifier = ConvLayer(cfg.aspp_out_channels, num_labels, 1, bias=True, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aspp(x))


class MobileViTV2ForSemanticSegmentation(nn.Module):
    """Backbone (output stride 16 or 8) + DeepLabV3. Returns low-resolution logits (B, labels, H/os, W/os)."""

    def __init__(self, cfg: MobileViTV2Config, num_labels: int) -> None:
        super().__init__()
        self.mobilevitv2 = MobileViTV2Backbone(cfg)
        self.segmentation_head = DeepLabV3Head(cfg, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.mobilevitv2(pixel_values)[-1])


def randomize_weights(
    module: nn.Module, seed: int, head_gain: float = 3.0, head_names: Sequence[str] = ()
) -> None:
    """Overwrite every float parameter and buffer with seeded, non-degenerate random values.

    The scheme keeps activations O(1) through the network so that parity tests compare meaningful,
    varied outputs (`transformers`' own init gives all-zero logits). Layers named in `head_names`
    get `head_gain` times the usual weight scale so that logits spread out.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * (high - low) + low

    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = head_gain if name in head_names else 1.0
                m.weight.copy_(normal(m.weight.shape, gain / fan_in**0.5))
                if m.bias is not None:
                    m.bias.copy_(normal(m.bias.shape, 0.05))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(uniform(m.weight.shape, 0.8, 1.2))
                m.bias.copy_(normal(m.bias.shape, 0.1))
                m.running_mean.copy_(normal(m.running_mean.shape, 0.1))
                m.running_var.copy_(uniform(m.running_var.shape, 0.5, 1.5))
            elif isinstance(m, nn.GroupNorm):
                m.weight.copy_(normal(m.weight.shape, 0.1, mean=1.0))
                m.bias.copy_(normal(m.bias.shape, 0.05))
