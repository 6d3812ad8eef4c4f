"""The detector's input transform: pixel normalisation, shorter-side resize and batching; and the
mapping of predictions back to the original image size (torchvision's GeneralizedRCNNTransform role)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detection.structures import ImageList

ROUNDINGS = ("round", "floor")


def resized_shape(height: int, width: int, min_size: int, max_size: int, rounding: str = "round") -> tuple[int, int]:
    """Shorter side to `min_size` unless that makes the longer side exceed `max_size` (Faster R-CNN), rounded
    to the nearest pixel as detectron2 does, or down (`rounding="floor"`) as torchvision does.
    `torch.sym_min`/`sym_max` are `min`/`max` on numbers and stay symbolic (no branch taken) when the sizes
    are, so that an exported detector resizes every image shape correctly."""
    scale = torch.sym_min(min_size / torch.sym_min(height, width), max_size / torch.sym_max(height, width))
    half = 0.5 if rounding == "round" else 0.0
    return torch.sym_max(1, torch.sym_int(height * scale + half)), torch.sym_max(1, torch.sym_int(width * scale + half))


class DetectionTransform(nn.Module):
    """Images arrive as float RGB tensors in 0..1 of any size.

    `pixel_mean`/`pixel_std` are in 0..255 units in `channel_order` (detectron2's convention; the MSRA
    Caffe weights want BGR with std 1). `pixel_range` is where they are applied: to the image scaled to 0..255
    (detectron2) or, divided by 255, to the 0..1 image (torchvision): the same map, rounded differently in the
    last bit, which a deep network can carry far enough to matter for bit-level parity. Training picks the
    shorter side at random from `min_size` (multi-scale training with several values); testing uses
    `test_min_size`.
    """

    def __init__(self, min_size: Sequence[int] = (600,), max_size: int = 1000, test_min_size: int | None = None,
                 pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
                 pixel_std: Sequence[float] = (58.395, 57.12, 57.375), channel_order: str = "RGB",
                 size_divisibility: int = 32, rounding: str = "round", pixel_range: int = 255) -> None:
        super().__init__()
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {channel_order!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"resize rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.rounding = rounding
        self.min_size = tuple(min_size)
        self.test_min_size = test_min_size or self.min_size[-1]
        self.max_size, self.channel_order, self.size_divisibility = max_size, channel_order, size_divisibility
        if pixel_range not in (1, 255):
            raise ValueError(f"pixel_range must be 1 or 255, got {pixel_range!r}")
        self.pixel_range = pixel_range
        mean, std = ([v * pixel_range / 255 for v in values] for values in (pixel_mean, pixel_std))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), False)

    def _target_size(self) -> int:
        if self.training and len(self.min_size) > 1:
            return self.min_size[int(torch.randint(len(self.min_size), ()).item())]
        return self.min_size[0] if self.training else self.test_min_size

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None
                ) -> tuple[ImageList, list[dict[str, Any]] | None]:
        out_images, out_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
            h, w = image.shape[-2:]
            new_h, new_w = resized_shape(h, w, self._target_size(), self.max_size, self.rounding)
            x = image * 255.0 if self.pixel_range == 255 else image
            if self.channel_order == "BGR":
                x = x.flip(0)
            x = (x - self.pixel_mean) / self.pixel_std
            x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            out_images.append(x)
            if targets is not None:
                t = dict(targets[i])
                scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], device=t["boxes"].device)
                t["boxes"] = t["boxes"] * scale
                out_targets.append(t)
        originals = [(im.shape[-2], im.shape[-1]) for im in images]
        return ImageList.from_tensors(out_images, self.size_divisibility, originals), out_targets

    @staticmethod
    def postprocess(detections: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Boxes from the resized input back to original pixel coordinates."""
        for det, (h, w), (oh, ow) in zip(detections, image_sizes, original_sizes, strict=True):
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            det["boxes"] = det["boxes"] * scale
        return detections
