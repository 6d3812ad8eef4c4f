"""Box operations shared by the RPN and the RoI heads."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, nms


def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                bound: float | torch.Tensor) -> torch.Tensor:
    """NMS within each group (image or class): indices kept, by decreasing score.

    Run eagerly this is torchvision's `batched_nms`, the call detectron2 makes, so that decisions match it
    exactly: one NMS per group for large inputs, and below that size one NMS on boxes moved apart by group
    (whose float32 rounding, up to ~0.008 px at 80 classes x 1333 px, can flip a pair whose IoU lies that close
    to the threshold, in detectron2 as here). While exporting, always the latter, with the known coordinate
    bound `bound` (the boxes are clipped to the image) as the spacing: no data-dependent branch or loop, one
    ONNX NonMaxSuppression (pass `torch.sym_max(h, w)` or a tensor, not Python's `max`, whose choice an export
    would freeze).
    """
    scores = scores.to(boxes.dtype)
    if not torch.compiler.is_compiling():
        return batched_nms(boxes, scores, groups, iou_threshold)
    offsets = groups.to(boxes.dtype) * (bound + 1.0)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
