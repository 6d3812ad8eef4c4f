"""VGG-16/19 (Simonyan & Zisserman), the paper's detection baseline; torchvision-compatible state dicts."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from backbones.registry import register_model
from backbones.resnet import Stage

# convolutions per block; every block ends in a 2x2 max-pool
_VGG_BLOCKS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGG(nn.Module):
    """`features` (3x3 convs + ReLU, max-pools) -> 7x7 adaptive pool -> fc6, fc7, fc8 (`classifier`).

    `width` (64 in the paper) scales the convolutions and `hidden` (4096) the fc layers, for small tests.
    """

    def __init__(self, blocks: tuple[int, ...], num_classes: int = 1000, *, width: int = 64, hidden: int = 4096,
                 dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self._block_ends: list[tuple[str, int, int]] = []  # (conv name, end index in features, channels)
        in_ch = 3
        for b, num_convs in enumerate(blocks):
            out_ch = width * 2 ** min(b, 3)
            if b:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(num_convs):
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = out_ch
            self._block_ends.append((f"conv{b + 1}_{num_convs}", len(layers), out_ch))
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.num_features = hidden
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[Stage]:
        """One stage per conv block, named by its last conv (`conv1_2` .. `conv5_3`), strides 1..16.

        Each block but the first starts with the previous block's max-pool; the final pool belongs to the
        classifier, so `conv5_3` is at stride 16 as the detector wants.
        """
        out, start = [], 0
        for b, (name, end, channels) in enumerate(self._block_ends):
            out.append(Stage(name, nn.Sequential(*self.features[start:end]), channels, 2**b))
            start = end
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


_VGG_FLOPS = {16: 15.3e9, 19: 19.6e9}

for _depth, _blocks in _VGG_BLOCKS.items():
    register_model(f"vgg{_depth}", partial(VGG, _blocks), family="vgg", input_size=224, num_classes=1000,
                   paper={"macs": _VGG_FLOPS[_depth]})
