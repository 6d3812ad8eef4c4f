"""Box operations shared by the RPN and the RoI heads."""

from __future__ import annotations

import torch
from torchvision.ops import nms


def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                bound: float | torch.Tensor) -> torch.Tensor:
    """NMS within each group (image or class): indices kept, by decreasing score.

    Boxes of different groups are moved `bound` + 1 apart so one `nms` call never lets them suppress each
    other (torchvision's batched_nms trick); `bound` is a known upper limit on the coordinates (the boxes
    are clipped to the image), which keeps the function free of data-dependent branches for export (pass
    `torch.sym_max(h, w)` or a tensor, not Python's `max`, whose choice an export would freeze).
    """
    offsets = groups.to(boxes.dtype) * (bound + 1.0)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
