"""Faster R-CNN as the composition of a shared trunk, the RPN and the RoI heads (torchvision's convention:
losses in training mode, per-image `{"boxes", "scores", "labels"}` in original coordinates otherwise)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from detection.roi_heads import RoIHeads
from detection.rpn import RegionProposalNetwork
from detection.transform import DetectionTransform


class FasterRCNN(nn.Module):
    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 transform: DetectionTransform, feature_name: str) -> None:
        super().__init__()
        self.backbone, self.rpn, self.roi_heads, self.transform = backbone, rpn, roi_heads, transform
        self.feature_name = feature_name
        self.dropped_degenerate = 0

    def _drop_degenerate(self, targets: list[dict]) -> list[dict]:
        cleaned = []
        for t in targets:
            boxes = t["boxes"].reshape(-1, 4)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(1)
            if not ok.all():
                self.dropped_degenerate += int((~ok).sum())
                warnings.warn(f"dropped {int((~ok).sum())} degenerate target boxes (image {t.get('image_id')}; "
                              f"{self.dropped_degenerate} so far)", stacklevel=3)
            cleaned.append({**t, "boxes": boxes[ok], "labels": t["labels"].reshape(-1)[ok]})
        return cleaned

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            targets = self._drop_degenerate(targets)
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]  # no int(): symbolic when exporting
        image_list, targets = self.transform(images, targets)
        feature = self.backbone(image_list.tensors)[self.feature_name]
        proposals, rpn_losses = self.rpn(image_list, feature, targets)
        detections, roi_losses = self.roi_heads(feature, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


class SingleImageDetector(nn.Module):
    """One image in, three tensors out: the detector in the shape that ONNX / torch.export deployment wants.

    Input: a float RGB image (3, H, W) in 0..1 of any size; output: boxes (N, 4) xyxy in its pixels, scores (N,),
    labels (N,) (1..K; 0 is background). Resizing and normalisation happen inside, as in `FasterRCNN`.
    """

    def __init__(self, detector: FasterRCNN) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = self.detector([image])[0]
        return result["boxes"], result["scores"], result["labels"]
