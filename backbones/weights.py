"""Reading weight files safely and loading them with errors that say what does not fit.

`.pth`/`.pt`/`.bin` files are opened with `torch.load(weights_only=True)`: no code in a checkpoint runs.
`.pkl` files (MSRA / Caffe2 `R-50.pkl`, detectron2 model-zoo `model_final_*.pkl`) are read with a restricted
unpickler that builds numpy arrays and plain containers and nothing else; `.safetensors` with safetensors.

Every file becomes a `WeightFile` in our (torchvision's) classifier keys, whatever its source; the layout is
told from the keys (`FORMATS`):
- `ours`: our checkpoints (`{"arch", "options", "state_dict"}`, also `"model"` for training checkpoints);
- `torchvision`: a plain state dict in torchvision's keys (timm's ResNets use the same keys);
- `timm`: timm's VGG (`pre_logits.fc1` as a 7x7 conv, `head.fc`);
- `msra`: Caffe2 blobs (`res2_0_branch2a_w`, ...);
- `detectron2`: detectron2 ResNet / Faster R-CNN C4 and FPN keys (`backbone.res2.0.conv1.norm.weight`,
  `roi_heads.res5.*`, `backbone.bottom_up.*`); what else a detector holds goes to `WeightFile.extra`.
DDP's `module.` prefix is dropped. The layouts' key maps are `backbones.layouts`, the restricted unpickler
`engine.unpickle`, writing weights out `backbones.saving`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones.layouts import (
    MSRA_INPUT,
    TORCHVISION_DETECTOR_BODY,
    detectron2_weights,
    guess_arch,
    is_detectron2_key,
    msra_to_state_dict,
    timm_vgg_to_state_dict,
    torchvision_detector_weights,
)
from backbones.weight_file import FORMATS, RECORD_KEYS, StateDict, WeightFile
from engine.checkpoint import load_weights_only
from engine.errors import UserError
from engine.unpickle import load_numpy_pickle

__all__ = ["FORMATS", "WeightFile", "check_options", "load_weights", "read_weights"]


def read_pickle(path: str) -> WeightFile:
    """A model-zoo pickle: MSRA / Caffe2 blobs (`{"blobs": {name: array}}` or the blobs alone), or a
    detectron2 model (`{"model": {name: array}, "__author__": ...}`)."""
    data = load_numpy_pickle(path, "latin1", "not a readable model-zoo pickle")
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data["model"].items()
                 if isinstance(v, np.ndarray)}
        weights = weights_from_object(state, path)
        if weights.format == "detectron2" and data.get("__author__") == "torchvision":
            weights.options, weights.input_format = {}, {}  # convert-torchvision-to-d2: torchvision's convention
        return weights
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict) or not blobs:
        raise UserError(f"{path}: expected a dict of named arrays (Caffe2 'blobs' or a detectron2 'model')")
    state = msra_to_state_dict(blobs, path)
    return WeightFile(state, path, guess_arch(state), {"stride_in_1x1": True}, dict(MSRA_INPUT), "msra")


def read_weights(path: str | os.PathLike, expect: str | None = None) -> WeightFile:
    """Read weights from `path` in our classifier keys (see the module docstring for the layouts told apart).

    `expect` (one of `FORMATS`, e.g. from `--from`) makes a file of another layout an error that names the
    `--from` that fits. A missing, corrupt or foreign file is a `UserError`.
    """
    path = os.fspath(path)
    weights = _read_any(path)
    # torchvision's keys are one layout, whoever wrote them: torchvision, timm (its ResNets) or us
    same_layout = weights.format in ("ours", "torchvision") and expect in ("ours", "torchvision", "timm")
    if expect and expect != weights.format and not same_layout:
        raise UserError(f"{path}: these are {weights.format} weights, not {expect}; use --from {weights.format}")
    return weights


def _read_any(path: str) -> WeightFile:
    if not os.path.isfile(path):  # checked here too: the .pkl and .safetensors readers need it as well
        raise UserError(f"{path}: weight file not found")
    if path.endswith(".pkl"):
        return read_pickle(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
        weights = weights_from_object(state, path)
        if "arch" in meta:  # written by save_weights
            weights.arch, weights.format = meta["arch"] or None, "ours"
            weights.options = json.loads(meta.get("options", "{}"))
            weights.input_format = json.loads(meta.get("input_format", "{}"))
        return weights
    obj = load_weights_only(path, "weight file", "not a readable weights-only checkpoint")
    return weights_from_object(obj, path)


def weights_from_object(obj: Any, source: str) -> WeightFile:
    """Interpret a loaded checkpoint object (see module docstring) as a `WeightFile`."""
    arch, options, input_format, fmt, record = None, {}, {}, "torchvision", {}
    if isinstance(obj, Mapping) and ("state_dict" in obj or "model" in obj):
        arch, options = obj.get("arch"), dict(obj.get("options") or {})
        input_format = dict(obj.get("input_format") or {}) or _recorded_input(obj)
        record = {k: obj[k] for k in RECORD_KEYS if k in obj}
        fmt = "ours" if "options" in obj or "input_format" in obj or record else fmt
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source}: does not contain a state dict of tensors")
    state_dict = {k.removeprefix("module."): v for k, v in obj.items()}
    if record.get("kind") == "faster_rcnn":
        return WeightFile(state_dict, source, None, {}, input_format, fmt, record=record)
    if any(is_detectron2_key(k) for k in state_dict):
        return detectron2_weights(state_dict, source)
    if any(k.startswith(TORCHVISION_DETECTOR_BODY) for k in state_dict):
        return torchvision_detector_weights(state_dict, source)
    if "pre_logits.fc1.weight" in state_dict:
        state_dict, fmt = timm_vgg_to_state_dict(state_dict), "timm"
    elif "conv1.0.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        raise UserError(f"{source}: a timm ResNet with a deep stem (resnet*c/d/s); only the original ResNet "
                        "(conv1 7x7) has a counterpart here")
    return WeightFile(state_dict, source, arch, options, input_format, fmt, record=record)


def _recorded_input(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The input convention our checkpoints record, in 0..255 units: a classifier's normalisation (stored in
    0..1 units, as torchvision's transforms take it), or a detector's `model.pixel_mean` / `pixel_std` /
    `channel_order`."""
    model = (obj.get("config") or {}).get("model") or {} if obj.get("kind") == "faster_rcnn" else {}
    if all(model.get(k) is not None for k in ("pixel_mean", "pixel_std", "channel_order")):
        return {k: model[k] for k in ("pixel_mean", "pixel_std", "channel_order")}
    if all(k in obj for k in ("pixel_mean", "pixel_std")):
        return {"pixel_mean": [round(255 * v, 6) for v in obj["pixel_mean"]],
                "pixel_std": [round(255 * v, 6) for v in obj["pixel_std"]],
                "channel_order": obj.get("channel_order", "RGB")}
    return {}


def check_options(weights: WeightFile, options: dict[str, Any]) -> None:
    """The builder options a weight file records (e.g. `stride_in_1x1` of MSRA weights) must be the ones the
    model is built with: same shapes, different network otherwise."""
    recorded = weights.options.get("stride_in_1x1")
    if recorded is not None and options.get("stride_in_1x1", False) != recorded:
        fix = f"stride_in_1x1={str(recorded).lower()}"
        raise UserError(f"{weights.source}: these weights were trained with {fix}; build the model with it "
                        f"(e.g. model.backbone_options.{fix})")


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
        hint = f" (for these weights use --arch {looks_like})" if looks_like not in (arch, "an unknown architecture") \
            else ""
        raise UserError(f"{weights.source}: weights of {looks_like} do not fit {arch}{hint}: "
                        + "; ".join(p for p in problems if p))
    model.load_state_dict(given, strict=False)
