"""Writing weights out: our checkpoint or safetensors (`save_weights`), and whether a network has a torchvision
counterpart that behaves the same (`torchvision_mismatch`, for `convert_weights.py --to torchvision`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backbones.layouts import guess_arch
from backbones.weight_file import WeightFile
from engine.checkpoint import atomic_output, save_checkpoint


def save_weights(weights: WeightFile, path: str | os.PathLike, arch: str | None = None) -> Path:
    """Write `weights` as our checkpoint (`.pth`: arch, options, input format, state dict, atomically) or as
    a bare state dict in safetensors (`.safetensors`, metadata in its header)."""
    path = Path(path)
    arch = arch or weights.arch or guess_arch(weights.state_dict)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"arch": str(arch), "options": json.dumps(weights.options), "input_format": json.dumps(
            weights.input_format)}
        with atomic_output(path) as tmp:
            save_file({k: v.contiguous() for k, v in weights.state_dict.items()}, str(tmp), metadata=meta)
        return path
    return save_checkpoint({"arch": arch, "options": weights.options, "input_format": weights.input_format,
                            "state_dict": weights.state_dict}, path)


# the registry networks torchvision has, and the builder options (with the value torchvision's network has) that
# change the computation or the shapes; others (zero_init_residual, dropout) only change training
TORCHVISION_OPTIONS = {"resnet": {"shortcut": "B", "width": 64, "stride_in_1x1": False},
                       "vgg": {"width": 64, "hidden": 4096}}


def torchvision_mismatch(arch: str, options: Mapping[str, Any], input_format: Mapping[str, Any]) -> str | None:
    """Why `arch` built with `options` and trained on `input_format` has no torchvision counterpart that
    behaves the same (None when torchvision's `models.<arch>` is that network): plain and CIFAR nets, other
    shortcuts, widths or stride placement, and weights expecting other than normalised RGB."""
    from backbones.registry import model_info

    family = model_info(arch).family
    if family not in TORCHVISION_OPTIONS:
        return f"torchvision has no {arch} ({family} networks are this toolkit's)"
    differ = {k: v for k, v in options.items() if k in TORCHVISION_OPTIONS[family]
              and v != TORCHVISION_OPTIONS[family][k]}
    if differ:
        return f"torchvision's {arch} has {', '.join(f'{k}={TORCHVISION_OPTIONS[family][k]!r}' for k in differ)}, " \
               f"these weights {', '.join(f'{k}={v!r}' for k, v in differ.items())}"
    if input_format and (input_format.get("channel_order") != "RGB"
                         or not all(20 <= v <= 120 for v in input_format.get("pixel_std", [58]))):
        return f"these weights expect {input_format.get('channel_order')} pixels with std " \
               f"{input_format.get('pixel_std')}, torchvision's models normalised RGB"
    return None
