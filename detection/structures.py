"""`ImageList`: a padded batch of differently sized images and the size of each before padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ImageList:
    tensors: torch.Tensor  # (B, C, H, W), zero-padded at the bottom and right
    image_sizes: list[tuple[int, int]]  # (height, width) of each image inside the padding
    original_sizes: list[tuple[int, int]] | None = None  # (height, width) before resizing, where known

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str) -> ImageList:
        return ImageList(self.tensors.to(device), self.image_sizes, self.original_sizes)

    def scales(self) -> list[float]:
        """Resized over original height of each image (1 where the original size is unknown)."""
        if self.original_sizes is None:
            return [1.0] * len(self.image_sizes)
        return [h / oh for (h, _), (oh, _) in zip(self.image_sizes, self.original_sizes, strict=True)]

    @classmethod
    def from_tensors(cls, images: list[torch.Tensor], size_divisibility: int = 0,
                     original_sizes: list[tuple[int, int]] | None = None) -> ImageList:
        """Pad to the largest height and width (rounded up to a multiple of `size_divisibility`)."""
        sizes = [(im.shape[-2], im.shape[-1]) for im in images]  # no int(): symbolic when exporting
        max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if size_divisibility > 1:  # rounded up without flooring negative numbers, which ONNX gets wrong
            max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
            max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
        batch = torch.stack([F.pad(im, (0, max_w - im.shape[-1], 0, max_h - im.shape[-2])) for im in images])
        return cls(batch, sizes, original_sizes)
