"""Parameter and multiply-add counts, and the comparison with the paper's figures.

Multiply-adds come from `torch.utils.flop_counter` (which counts 2 FLOPs per multiply-add in convolutions
and matrix products) halved: the paper's "FLOPs" are multiply-adds of the conv and fc layers. Models are
built on the meta device, so counting even ResNet-1202 or VGG-19 costs no memory and little time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones.registry import build_model, list_models, model_info


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, input_size: int, device: torch.device | str | None = None) -> int:
    """Multiply-adds of one forward pass on a 3 x `input_size` x `input_size` image."""
    device = device or next(model.parameters()).device
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def model_stats(name: str, input_size: int | None = None, **options: Any) -> dict[str, Any]:
    """`{"arch", "options", "input_size", "params", "macs"}` (macs: multiply-adds) for a registered model."""
    input_size = input_size or model_info(name).input_size
    with torch.device("meta"):
        model = build_model(name, **options)
    return {"arch": name, "options": options, "input_size": input_size,
            "params": count_parameters(model), "macs": count_multiply_adds(model, input_size, "meta")}


def paper_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Our counts beside the paper's for every model (in the paper's configuration, e.g. `stride_in_1x1`
    for the bottleneck nets); `*_rel_diff` is (ours - paper) / paper where the paper gives a figure."""
    rows = []
    for name in names or list_models():
        info = model_info(name)
        row = model_stats(name, **info.paper_options)
        for key in ("macs", "params"):
            if key in info.paper:
                row[f"paper_{key}"] = info.paper[key]
                row[f"{key}_rel_diff"] = (row[key] - info.paper[key]) / info.paper[key]
        rows.append(row)
    return rows
