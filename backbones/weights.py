"""Reading weight files safely and loading them with errors that say what does not fit.

Files are opened with `torch.load(weights_only=True)`: no code in a checkpoint runs. Recognised
layouts: a plain state dict (torchvision's files), our checkpoints (`{"arch", "options", "state_dict"}`,
also `"model"` for training checkpoints), and DDP's `module.` prefix.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from backbones.resnet import IMAGENET_DEPTHS, Bottleneck
from engine.errors import UserError

StateDict = Mapping[str, torch.Tensor]


@dataclass
class WeightFile:
    """A state dict and what the file says about it (architecture and options when it is ours)."""

    state_dict: dict[str, torch.Tensor]
    source: str
    arch: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def read_weights(path: str | os.PathLike) -> WeightFile:
    """Read a state dict from `path` (weights only); a missing, corrupt or foreign file is a `UserError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable weights-only checkpoint ({first_line})") from None
    return weights_from_object(obj, path)


def weights_from_object(obj: Any, source: str) -> WeightFile:
    """Interpret a loaded checkpoint object (see module docstring) as a `WeightFile`."""
    arch, options = None, {}
    if isinstance(obj, Mapping) and ("state_dict" in obj or "model" in obj):
        arch, options = obj.get("arch"), dict(obj.get("options") or {})
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source}: does not contain a state dict of tensors")
    state_dict = {k.removeprefix("module."): v for k, v in obj.items()}
    return WeightFile(state_dict, source, arch, options)


def guess_arch(state_dict: StateDict) -> str | None:
    """Registry name whose torchvision-style keys match `state_dict`, from its block counts (best effort)."""
    if "features.0.weight" in state_dict:
        convs = sum(1 for k, v in state_dict.items() if k.startswith("features.") and v.dim() == 4)
        return {13: "vgg16", 16: "vgg19"}.get(convs)
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if indices:
            blocks.append(max(indices) + 1)
    bottleneck = "layer1.0.conv3.weight" in state_dict
    if len(blocks) == 3 and not bottleneck:
        return f"cifar_resnet{6 * blocks[0] + 2}"
    for depth, (block, layers, _) in IMAGENET_DEPTHS.items():
        if tuple(blocks) == layers and (block is Bottleneck) == bottleneck:
            return f"resnet{depth}"
    return None


def _preview(keys: Iterable[str], limit: int = 4) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: nn.Module, weights: WeightFile | StateDict, *, arch: str,
                 skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load `weights` into `model` (registry name `arch`) strictly, except keys under `skip_prefixes`.

    A mismatch raises a `UserError` naming the missing, unexpected and wrongly shaped keys and the
    architecture the weights look like.
    """
    if not isinstance(weights, WeightFile):
        weights = WeightFile(dict(weights), "state dict")

    def keep(key: str) -> bool:
        return not key.startswith(skip_prefixes)

    expected = {k: v for k, v in model.state_dict().items() if keep(k)}
    given = {k: v for k, v in weights.state_dict.items() if keep(k) and not k.endswith("num_batches_tracked")}
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    missing = expected.keys() - given.keys()
    unexpected = given.keys() - expected.keys()
    wrong_shape = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in expected.keys() & given.keys() if given[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        looks_like = weights.arch or guess_arch(weights.state_dict) or "an unknown architecture"
        problems = [f"{len(missing)} missing keys ({_preview(missing)})" if missing else "",
                    f"{len(unexpected)} unexpected keys ({_preview(unexpected)})" if unexpected else "",
                    f"{len(wrong_shape)} shape mismatches (file vs model: {_preview(wrong_shape)})"
                    if wrong_shape else ""]
        raise UserError(f"{weights.source}: weights of {looks_like} do not fit {arch}: "
                        + "; ".join(p for p in problems if p))
    model.load_state_dict(given, strict=False)
