"""The paper's Fig. 7: standard deviation of every 3x3 layer's response (after BN, before the addition and
the nonlinearity), for plain nets against ResNets. Residual functions are expected to respond less."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from backbones.resnet import BasicBlock, Bottleneck
from engine.metrics import pyplot, save_figure


def response_layers(model: nn.Module) -> list[nn.Module]:
    """The BN after each 3x3 convolution, in network order (the stem's too when it is a 3x3 conv)."""
    layers = []
    if getattr(model, "conv1", None) is not None and model.conv1.kernel_size == (3, 3):
        layers.append(model.bn1)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            layers += [m.bn1, m.bn2]
        elif isinstance(m, Bottleneck):
            layers.append(m.bn2)
    return layers


@torch.no_grad()
def response_stds(model: nn.Module, batches: Iterable, device: torch.device) -> list[float]:
    """Per layer: each channel's standard deviation over all images and positions, averaged over channels."""
    layers = response_layers(model)
    sums: list[torch.Tensor | None] = [None] * len(layers)

    def hook(i: int):
        def record(_module, _inputs, out: torch.Tensor) -> None:
            x = out.detach().double().transpose(0, 1).flatten(1)
            stats = torch.stack([x.sum(1), x.square().sum(1), torch.full_like(x[:, 0], x.shape[1])])
            sums[i] = stats if sums[i] is None else sums[i] + stats
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        model.eval()
        for batch in batches:
            model(batch[0].to(device))
    finally:
        for h in handles:
            h.remove()
    stds = []
    for total, sq, n in (s for s in sums if s is not None):
        var = (sq / n - (total / n).square()).clamp_min(0)
        stds.append(float(var.sqrt().mean()))
    return stds


def plot_responses(results: Mapping[str, list[float]], out_png: str | os.PathLike) -> Path:
    """Two panels as in Fig. 7: stds in layer order, and sorted in descending order."""
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(7, 6))
    for i, (label, stds) in enumerate(results.items()):
        style = "--" if "plain" in label else "-"
        top.plot(range(1, len(stds) + 1), stds, style, color=f"C{i}", label=label)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, color=f"C{i}", label=label)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out_png)
