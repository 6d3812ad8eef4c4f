"""Box regression targets: (dx, dy, dw, dh) of a box relative to a reference box, scaled by `weights`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# largest dw/dh a prediction may use (a box at most 1000/16 times larger than its reference)
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode/decode in the R-CNN parametrisation; RPN uses weights (1, 1, 1, 1), the detector (10, 10, 5, 5)."""

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Deltas that turn `reference` (N, 4) into `boxes` (N, 4), both xyxy; computed in float32 at least."""
        reference, boxes = _geometry(reference), _geometry(boxes)
        wx, wy, ww, wh = self.weights
        rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
        return torch.stack([wx * (bx - rx) / rw, wy * (by - ry) / rh,
                            ww * torch.log(bw / rw), wh * torch.log(bh / rh)], dim=1)

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Apply deltas (N, 4k) to reference boxes (N, 4); returns (N, 4k) xyxy boxes in float32 (or float64 if
        given): deltas a network computed in bf16/fp16 under autocast are cast up, box geometry never down."""
        deltas, reference = _geometry(deltas), _geometry(reference)
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        rw = (reference[:, 2] - reference[:, 0])[:, None]
        rh = (reference[:, 3] - reference[:, 1])[:, None]
        rx, ry = reference[:, 0:1] + 0.5 * rw, reference[:, 1:2] + 0.5 * rh
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx, cy = dx * rw + rx, dy * rh + ry
        w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
        return boxes.reshape(deltas.shape)


def _geometry(x: torch.Tensor) -> torch.Tensor:
    """Box arithmetic in float32 or wider: half precision has 8 bits of mantissa, pixels at 1000 lose whole units."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
