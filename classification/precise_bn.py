"""Precise BN: re-estimating BatchNorm's running statistics as a plain average over training batches, the pass
made before a classifier's statistics are frozen for detection (`train.recompute_bn`)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches, num_batches: int, device: torch.device) -> None:
    """Re-estimate every BN's running statistics as a plain average over `num_batches` training batches
    (the "precise BN" pass before the statistics are frozen for detection)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    for _ in range(num_batches):
        model(next(batches)[0].to(device))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
