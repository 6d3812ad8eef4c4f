"""The CIFAR-10 nets of Sec. 4.2: 3x3 conv, then 3 stages of 2n layers at 16/32/64 filters (6n+2 layers).

Built from the same `BasicBlock` and `make_stage` as the ImageNet ResNets; option A shortcuts by default.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from backbones.registry import register_model
from backbones.resnet import BasicBlock, Stage, conv3x3, init_weights, make_stage


class CifarStem(nn.Module):
    """conv1 / bn1 / relu of a `CifarResNet` as one module."""

    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))


class CifarResNet(nn.Module):
    """6n+2-layer net on 32x32 inputs; `residual=False` gives the plain CIFAR nets."""

    def __init__(self, depth: int, num_classes: int = 10, *, shortcut: str = "A", residual: bool = True,
                 zero_init_residual: bool = False, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        for i in range(3):
            planes = width * 2**i
            stage = make_stage(BasicBlock, in_planes, planes, n, 1 if i == 0 else 2,
                               shortcut=shortcut, residual=residual)
            self.add_module(f"layer{i + 1}", stage)
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        init_weights(self, zero_init_residual)

    def stages(self) -> list[Stage]:
        """stem and res2..res4 at strides 1, 1, 2, 4 (feature maps 32, 32, 16, 8 for a 32x32 input)."""
        width = self.conv1.out_channels
        out = [Stage("stem", CifarStem(self), width, 1)]
        for i in range(3):
            out.append(Stage(f"res{i + 2}", getattr(self, f"layer{i + 1}"), width * 2**i, 2**i))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# depth -> parameters in the paper's Table 6 (plain nets have no reported count)
_CIFAR_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6, 1202: 19.4e6}

for _depth, _params in _CIFAR_PARAMS.items():
    register_model(f"cifar_resnet{_depth}", partial(CifarResNet, _depth), family="cifar_resnet", input_size=32,
                   num_classes=10, fixed=("residual",), paper={"params": _params})
for _depth in (20, 32, 44, 56, 110):
    register_model(f"cifar_plain{_depth}", partial(CifarResNet, _depth, residual=False), family="cifar_plain",
                   input_size=32, num_classes=10, fixed=("residual", "shortcut", "zero_init_residual"))
