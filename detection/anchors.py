"""Anchors on one feature map: sizes x aspect ratios at every position of a stride-`stride` grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class AnchorGenerator(nn.Module):
    """Faster R-CNN anchors (3 scales x 3 ratios at stride 16 by default), ordered position-major.

    A cell anchor of size s and ratio r = h / w has area s^2 and is centred on (0, 0); the anchors of
    position (y, x) are the cell anchors shifted by (x * stride, y * stride).
    """

    def __init__(self, sizes: Sequence[float] = (128, 256, 512), aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 stride: int = 16) -> None:
        super().__init__()
        self.stride = stride
        cells = []
        for size in sizes:
            for ratio in aspect_ratios:
                w = size / math.sqrt(ratio)
                h = size * math.sqrt(ratio)
                cells.append([-w / 2, -h / 2, w / 2, h / 2])
        self.register_buffer("cell_anchors", torch.tensor(cells, dtype=torch.float32), persistent=False)
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return len(self.cell_anchors)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """All anchors (H * W * A, 4) for a (B, C, H, W) feature map; the same for every image."""
        h, w = feature.shape[-2:]
        key = (h, w, feature.device)
        exporting = torch.compiler.is_compiling()  # symbolic sizes: compute in the graph, cache nothing
        if not exporting and key in self._cache:
            return self._cache[key]
        ys = torch.arange(h, device=feature.device, dtype=torch.float32) * self.stride
        xs = torch.arange(w, device=feature.device, dtype=torch.float32) * self.stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        anchors = (shifts + self.cell_anchors.to(feature.device)).reshape(-1, 4)
        if not exporting:
            self._cache = {key: anchors}
        return anchors
