"""Anchors on one or several feature maps: sizes x aspect ratios at every position of each map's grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], rounded: bool = False) -> torch.Tensor:
    """(len(sizes) * len(aspect_ratios), 4) boxes centred on (0, 0), size-major: a box of size s and ratio
    r = h / w has area s^2. `rounded` rounds the corners to whole pixels, as torchvision does."""
    cells = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = size / math.sqrt(ratio)
            h = size * math.sqrt(ratio)
            cells.append([-w / 2, -h / 2, w / 2, h / 2])
    anchors = torch.tensor(cells, dtype=torch.float32)
    return anchors.round() if rounded else anchors


class AnchorGenerator(nn.Module):
    """Faster R-CNN anchors, ordered level by level, position-major within a level.

    C4: one level, all `sizes` at stride 16. FPN: one entry of `sizes` per level (e.g. `[[32], [64], ...,
    [512]]` at strides 4..64). The anchors of position (y, x) of a level are its cell anchors shifted by
    (x * stride, y * stride). `stride_from_image` takes each level's stride as the padded image size divided
    (integer division) by its grid size instead of the nominal stride, and `round_cells` rounds the cell
    anchors: both are torchvision's conventions (needed to reproduce its models), not detectron2's.
    """

    def __init__(self, sizes: Sequence[float] | Sequence[Sequence[float]] = (128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), strides: int | Sequence[int] = 16, *,
                 round_cells: bool = False, stride_from_image: bool = False) -> None:
        super().__init__()
        strides = [strides] if isinstance(strides, int) else list(strides)
        per_level = [list(sizes)] if len(strides) == 1 and not isinstance(sizes[0], Sequence) else [
            list(s) if isinstance(s, Sequence) else [s] for s in sizes]
        if len(per_level) != len(strides):
            raise ValueError(f"{len(per_level)} anchor size groups for {len(strides)} feature maps")
        counts = {len(s) * len(aspect_ratios) for s in per_level}
        if len(counts) != 1:
            raise ValueError("every level needs the same number of anchors per position (one shared RPN head)")
        self.strides, self.stride_from_image = strides, stride_from_image
        for i, level_sizes in enumerate(per_level):
            self.register_buffer(f"cell_anchors_{i}", cell_anchors(level_sizes, aspect_ratios, round_cells),
                                 persistent=False)
        self._cache: dict[tuple, list[torch.Tensor]] = {}

    @property
    def num_anchors(self) -> int:
        """Anchors per position (the same on every level)."""
        return len(self.cell_anchors_0)

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor],
                image_size: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Per level, all anchors (H * W * A, 4) of a (B, C, H, W) feature map, the same for every image.
        `image_size` (the padded batch's height and width) is needed with `stride_from_image`."""
        features = [features] if isinstance(features, torch.Tensor) else list(features)
        grids = [tuple(f.shape[-2:]) for f in features]
        device = features[0].device
        exporting = torch.compiler.is_compiling()  # symbolic sizes: compute in the graph, cache nothing
        key = (*grids, image_size, device)
        if not exporting and key in self._cache:
            return self._cache[key]
        anchors = []
        for i, (h, w) in enumerate(grids):
            stride_y = stride_x = self.strides[i]
            if self.stride_from_image:
                stride_y, stride_x = image_size[0] // h, image_size[1] // w
            ys = torch.arange(h, device=device, dtype=torch.float32) * stride_y
            xs = torch.arange(w, device=device, dtype=torch.float32) * stride_x
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            cells = getattr(self, f"cell_anchors_{i}").to(device)
            anchors.append((shifts + cells).reshape(-1, 4))
        if not exporting:
            self._cache = {key: anchors}
        return anchors
