"""Assigning each anchor or proposal to a ground-truth box by IoU, with foreground/background/ignore labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Matcher:
    """`thresholds` split IoU into intervals labelled by `labels` (1 foreground, 0 background, -1 ignore).

    RPN: thresholds (0.3, 0.7), labels (0, -1, 1), and `allow_low_quality_matches` so every ground-truth box
    keeps the anchors that overlap it most even below 0.7. Detector: thresholds (0.1, 0.5), labels
    (-1, 0, 1): background is IoU in [0.1, 0.5), foreground >= 0.5.
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool = False) -> None:
        if len(labels) != len(thresholds) + 1:
            raise ValueError("need one more label than thresholds")
        self.thresholds = [float("-inf"), *thresholds, float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`iou` (G ground truths, N candidates) -> (matched ground-truth index (N,), label (N,))."""
        if iou.numel() == 0:  # no ground truth: everything is background
            n = iou.shape[1]
            return (torch.zeros(n, dtype=torch.int64, device=iou.device),
                    torch.full((n,), self.labels[0], dtype=torch.int8, device=iou.device))
        iou = iou.nan_to_num(0.0)  # a box without area (0 / 0) overlaps nothing
        best_iou, matches = iou.max(dim=0)
        match_labels = torch.empty_like(matches, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:], strict=True):
            match_labels.masked_fill_((best_iou >= low) & (best_iou < high), label)
        if self.allow_low_quality_matches:  # every box keeps the candidates it overlaps most (ties included)
            highest = iou.max(dim=1, keepdim=True).values
            best_of_some_box = ((iou == highest) & (highest > 0)).any(dim=0)
            match_labels = torch.where(best_of_some_box, torch.ones_like(match_labels), match_labels)
        return matches, match_labels
