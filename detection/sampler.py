"""Balanced sampling of foreground and background for the RPN and detector losses."""

from __future__ import annotations

import torch


def sample_labels(labels: torch.Tensor, num_samples: int, positive_fraction: float,
                  background: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of at most `num_samples * positive_fraction` foreground (label > 0 and != ignore) and enough
    background (== `background`) to fill `num_samples`, chosen at random. Labels < 0 are never sampled."""
    positive = torch.nonzero((labels >= 0) & (labels != background), as_tuple=True)[0]
    negative = torch.nonzero(labels == background, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos, neg
