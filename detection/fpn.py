"""Feature Pyramid Network (Lin et al. 2017) on the ResNet stages: the neck of the FPN detector.

Lateral 1x1 convolutions bring res2..res5 to `out_channels`; a top-down pass adds each coarser map, upsampled
(nearest) to the finer one's size; a 3x3 convolution smooths every sum. With a `norm` (detectron2's FPN.NORM,
e.g. GroupNorm in its scratch recipes) each of these convolutions is followed by that layer and has no bias.
P6, for the RPN only, is P5 subsampled by a stride-2 max-pool of size 1 (as detectron2's and torchvision's
`LastLevelMaxPool`). Output strides: P2 4, P3 8, P4 16, P5 32, P6 64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones.features import Backbone, ShapeSpec
from backbones.layers import make_norm


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm: str = "none") -> nn.Module:
    """A convolution ('same' padding) initialised as detectron2's c2_xavier_fill and torchvision's FPN (Kaiming
    uniform, a = 1), followed by a fresh `norm` layer (then without bias) unless `norm` is `none`."""
    layer = make_norm(norm, out_channels)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=layer is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv if layer is None else nn.Sequential(conv, layer)


class FPN(nn.Module):
    """`forward({"res2": C2, ..., "res5": C5}) -> {"p2": P2, ..., "p6": P6}` (each `out_channels` wide)."""

    def __init__(self, in_features: Sequence[str], in_channels: Sequence[int], out_channels: int = 256,
                 top_block: bool = True, norm: str = "none") -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.lateral_convs = nn.ModuleList(conv_norm(c, out_channels, 1, norm) for c in in_channels)
        self.output_convs = nn.ModuleList(conv_norm(out_channels, out_channels, 3, norm) for _ in in_channels)
        self.top_block = top_block
        first = int(self.in_features[0].removeprefix("res"))
        self.out_features = [f"p{first + i}" for i in range(len(in_features) + int(top_block))]

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        maps = [features[name] for name in self.in_features]
        inner = self.lateral_convs[-1](maps[-1])
        outputs = [self.output_convs[-1](inner)]
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral_convs[i](maps[i])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output_convs[i](inner))
        if self.top_block:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))
        return dict(zip(self.out_features, outputs, strict=True))


class BackboneWithFPN(nn.Module):
    """A ResNet trunk (`backbones.Backbone` returning res2..res5) followed by an `FPN`."""

    def __init__(self, trunk: Backbone, out_channels: int = 256, norm: str = "none") -> None:
        super().__init__()
        shapes = trunk.output_shape()
        self.trunk = trunk
        self.fpn = FPN(list(shapes), [s.channels for s in shapes.values()], out_channels, norm=norm)
        first = min(s.stride for s in shapes.values())
        self._shapes = {name: ShapeSpec(out_channels, first * 2**i) for i, name in enumerate(self.fpn.out_features)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.trunk(x))
