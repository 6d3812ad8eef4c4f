"""ResNets of the paper (Table 1) and their plain counterparts, torchvision-compatible state dicts.

One `BasicBlock`, one `Bottleneck`, one `make_stage`; depth, shortcut option (A/B/C), stride placement
and residual-or-plain are arguments. Module names follow torchvision (`conv1`, `bn1`, `layer1..4`,
`downsample`, `fc`) so its checkpoints load with `strict=True`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from backbones.layers import ZeroPadShortcut
from backbones.registry import register_model

SHORTCUTS = ("A", "B", "C")


class Stage(NamedTuple):
    """A named piece of a network for feature extraction: output channels and stride w.r.t. the input."""

    name: str
    module: nn.Module
    channels: int
    stride: int


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def make_shortcut(option: str, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The block's shortcut branch; `None` is the identity.

    A: zero-padded identity where dimensions change; B: 1x1 projection where they change;
    C: projection on every block.
    """
    if option not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {option!r}")
    changes = stride != 1 or in_planes != out_planes
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride) if changes else None
    if option == "B" and not changes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 residual: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut
        self.residual = residual

    @property
    def last_bn(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore to `expansion` x width (ResNet-50/101/152).

    `stride_in_1x1=True` puts the stride on the first 1x1 as in the paper's Caffe models (MSRA);
    the default puts it on the 3x3 (torchvision "v1.5").
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 residual: bool = True, stride_in_1x1: bool = False) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut
        self.residual = residual

    @property
    def last_bn(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def make_stage(block: Block, in_planes: int, planes: int, num_blocks: int, stride: int, *,
               shortcut: str = "B", residual: bool = True, **block_options: bool) -> nn.Sequential:
    """`num_blocks` blocks; the first one changes stride and width, the shortcut option decides how."""
    out_planes = planes * block.expansion
    blocks = []
    for i in range(num_blocks):
        s = stride if i == 0 else 1
        branch = make_shortcut(shortcut, in_planes, out_planes, s) if residual else None
        blocks.append(block(in_planes, planes, s, branch, residual, **block_options))
        in_planes = out_planes
    return nn.Sequential(*blocks)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He initialisation (fan-out) for convolutions, BN to identity; optionally zero each block's last BN
    so every residual block starts as the identity (Goyal et al.)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn.weight)


class ResNetStem(nn.Module):
    """The conv1 / bn1 / relu / maxpool of a `ResNet`, as one module for feature extraction."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class ResNet(nn.Module):
    """ImageNet ResNet (Table 1): 7x7 stem, four stages at strides 4..32, global pool, fc.

    `residual=False` gives the plain nets; `width` scales every stage (64 in the paper), which keeps
    tests and CPU demos small without another class.
    """

    def __init__(self, block: Block, layers: tuple[int, ...], num_classes: int = 1000, *, shortcut: str = "B",
                 residual: bool = True, stride_in_1x1: bool = False, zero_init_residual: bool = False,
                 width: int = 64) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"an ImageNet ResNet has 4 stages, got {len(layers)}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block_options = {"stride_in_1x1": stride_in_1x1} if block is Bottleneck else {}
        in_planes = width
        for i, num_blocks in enumerate(layers):
            planes = width * 2**i
            stage = make_stage(block, in_planes, planes, num_blocks, 1 if i == 0 else 2,
                               shortcut=shortcut, residual=residual, **block_options)
            self.add_module(f"layer{i + 1}", stage)
            in_planes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        init_weights(self, zero_init_residual)

    def stages(self) -> list[Stage]:
        """stem and res2..res5 (torchvision's layer1..layer4) with channels and strides 4, 4, 8, 16, 32."""
        stem_channels = self.conv1.out_channels
        out = [Stage("stem", ResNetStem(self), stem_channels, 4)]
        for i in range(4):
            layer = getattr(self, f"layer{i + 1}")
            out.append(Stage(f"res{i + 2}", layer, layer[-1].last_bn.num_features, 4 * 2**i))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name -> block, blocks per stage, multiply-adds in the paper (Table 1; plain-34 from Sec. 3.3)
IMAGENET_DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2), 1.8e9),
    34: (BasicBlock, (3, 4, 6, 3), 3.6e9),
    50: (Bottleneck, (3, 4, 6, 3), 3.8e9),
    101: (Bottleneck, (3, 4, 23, 3), 7.6e9),
    152: (Bottleneck, (3, 8, 36, 3), 11.3e9),
}

for _depth, (_block, _layers, _flops) in IMAGENET_DEPTHS.items():
    _basic = ("stride_in_1x1",) if _block is BasicBlock else ()
    register_model(
        f"resnet{_depth}", partial(ResNet, _block, _layers), family="resnet", input_size=224, num_classes=1000,
        fixed=("residual", *_basic), paper={"macs": _flops},
        # the paper's Caffe bottleneck strides in the 1x1, which is what its FLOP count measures
        paper_options={} if _basic else {"stride_in_1x1": True},
    )
    if _depth in (18, 34):
        register_model(
            f"plain{_depth}", partial(ResNet, _block, _layers, residual=False), family="plain", input_size=224,
            num_classes=1000, fixed=("residual", "shortcut", "zero_init_residual", *_basic),
            paper={"macs": _flops},
        )
