"""Balanced sampling of foreground and background for the RPN and detector losses, without host syncs."""

from __future__ import annotations

import torch


def sample_labels(labels: torch.Tensor, num_samples: int, positive_fraction: float,
                  background: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`min(num_samples, len(labels))` indices chosen at random and a mask of those that count: at most
    `num_samples * positive_fraction` foreground (label > 0, or != `background` and not ignore) and enough
    background (== `background`) to fill `num_samples`; labels < 0 are never sampled.

    The output has a fixed size (what fewer candidates leave over is marked invalid rather than cut off), and
    the choice is made with tensor operations only: nothing waits for the device to say how many foreground
    labels there are (the `nonzero` + `randperm` form does). Eligible foreground sorts first, background after,
    each in random order, and the first `num_samples` are taken.
    """
    n = labels.numel()
    positive = (labels >= 0) & (labels != background)
    negative = labels == background
    key = torch.rand(n, device=labels.device)
    # each positive's place in a random order of the positives: the first `max_positive` are eligible
    order = torch.where(positive, key, 2.0).argsort()
    place = torch.empty_like(order).scatter_(0, order, torch.arange(n, device=labels.device))
    eligible = positive & (place < int(num_samples * positive_fraction))
    priority = torch.where(eligible, 2.0 + key, torch.where(negative, 1.0 + key, -1.0))
    top = priority.topk(min(num_samples, n))
    return top.indices, top.values >= 0
