"""Reading weight files safely and loading them with errors that say what does not fit.

`.pth`/`.pt` files are opened with `torch.load(weights_only=True)`: no code in a checkpoint runs. Recognised
layouts: a plain state dict (torchvision's files), our checkpoints (`{"arch", "options", "state_dict"}`,
also `"model"` for training checkpoints), and DDP's `module.` prefix. `.pkl` files are the MSRA / Caffe2
model-zoo pickles (`R-50.pkl`, `R-101.pkl`), read with a restricted unpickler that builds numpy arrays and
plain containers and nothing else.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from backbones.resnet import IMAGENET_DEPTHS, Bottleneck
from engine.checkpoint import load_weights_only, save_checkpoint
from engine.errors import UserError

StateDict = Mapping[str, torch.Tensor]


@dataclass
class WeightFile:
    """A state dict and what the file says about it: architecture and builder options where it records
    them, and the input convention (`pixel_mean`, `pixel_std` in 0..255 units, `channel_order`) where it
    differs from ImageNet-normalised RGB."""

    state_dict: dict[str, torch.Tensor]
    source: str
    arch: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    input_format: dict[str, Any] = field(default_factory=dict)


def _empty_array(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    """What numpy's pickled `_reconstruct` does: an empty array that the pickle then fills."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


class NumpyUnpickler(pickle.Unpickler):
    """Builds only plain containers, strings, bytes and numpy arrays: what CIFAR-10 batches and the
    model-zoo pickles hold. Any other global (a function to call, a class to build) is refused."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _empty_array,
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


MSRA_INPUT = {"pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0], "channel_order": "BGR"}


def _msra_key(name: str) -> str | None:
    """torchvision-style key of a Caffe2 ResNet blob name (None: not a weight of the network)."""
    if name in ("conv1_w",):
        return "conv1.weight"
    if name.startswith("res_conv1_bn_"):
        return {"s": "bn1.weight", "b": "bn1.bias"}.get(name[-1])
    if name in ("fc1000_w", "pred_w"):
        return "fc.weight"
    if name in ("fc1000_b", "pred_b"):
        return "fc.bias"
    m = re.fullmatch(r"res(\d)_(\d+)_branch(1|2a|2b|2c)(_bn)?_(w|s|b)", name)
    if not m:
        return None
    stage, block, branch, bn, kind = m.groups()
    prefix = f"layer{int(stage) - 1}.{block}."
    if branch == "1":
        return prefix + ("downsample.0.weight" if not bn else {"s": "downsample.1.weight",
                                                                 "b": "downsample.1.bias"}[kind])
    index = {"2a": 1, "2b": 2, "2c": 3}[branch]
    if not bn:
        return prefix + f"conv{index}.weight"
    return prefix + f"bn{index}." + {"s": "weight", "b": "bias"}[kind]


def msra_to_state_dict(blobs: dict[str, np.ndarray], source: str, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Map Caffe2 ResNet blobs to our keys. Caffe2 stores each BN as a fixed scale and shift, which becomes a
    BN with mean 0 and variance 1 - eps (so that its eval-mode output equals the scale and shift exactly)."""
    state: dict[str, torch.Tensor] = {}
    for name, value in blobs.items():
        if name.endswith("_momentum"):
            continue
        key = _msra_key(name)
        if key is None:
            raise UserError(f"{source}: unexpected blob {name!r} (not a Caffe2 ResNet classifier)")
        if not isinstance(value, np.ndarray):
            raise UserError(f"{source}: blob {name!r} is not an array")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if name.endswith("_bn_s"):
            base = key[: -len("weight")]
            state[base + "running_mean"] = torch.zeros_like(state[key])
            state[base + "running_var"] = torch.full_like(state[key], 1.0 - eps)
    return state


def read_msra_pickle(path: str) -> WeightFile:
    """A model-zoo ResNet pickle (`{"blobs": {name: array}}` or the blobs alone), as a WeightFile with the
    stride-in-1x1 option and the BGR / mean-only input convention those weights were trained with."""
    try:
        with open(path, "rb") as f:
            data = NumpyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{path}: not a readable model-zoo pickle ({exc})") from None
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict) or not blobs:
        raise UserError(f"{path}: expected a dict of named arrays (Caffe2 'blobs')")
    state = msra_to_state_dict(blobs, path)
    return WeightFile(state, path, guess_arch(state), {"stride_in_1x1": True}, dict(MSRA_INPUT))


def read_weights(path: str | os.PathLike) -> WeightFile:
    """Read a state dict from `path` (weights only); a missing, corrupt or foreign file is a `UserError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):  # checked here too: the .pkl and .safetensors readers need it as well
        raise UserError(f"{path}: weight file not found")
    if path.endswith(".pkl"):
        return read_msra_pickle(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
        return WeightFile(state, path, meta.get("arch") or None, json.loads(meta.get("options", "{}")),
                          json.loads(meta.get("input_format", "{}")))
    obj = load_weights_only(path, "weight file", "not a readable weights-only checkpoint")
    return weights_from_object(obj, path)


def weights_from_object(obj: Any, source: str) -> WeightFile:
    """Interpret a loaded checkpoint object (see module docstring) as a `WeightFile`."""
    arch, options, input_format = None, {}, {}
    if isinstance(obj, Mapping) and ("state_dict" in obj or "model" in obj):
        arch, options = obj.get("arch"), dict(obj.get("options") or {})
        input_format = dict(obj.get("input_format") or {})
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source}: does not contain a state dict of tensors")
    state_dict = {k.removeprefix("module."): v for k, v in obj.items()}
    return WeightFile(state_dict, source, arch, options, input_format)


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


def save_weights(weights: WeightFile, path: str | os.PathLike, arch: str | None = None) -> Path:
    """Write `weights` as our checkpoint (`.pth`: arch, options, input format, state dict, atomically) or as
    a bare state dict in safetensors (`.safetensors`, metadata in its header)."""
    path = Path(path)
    arch = arch or weights.arch or guess_arch(weights.state_dict)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"arch": str(arch), "options": json.dumps(weights.options), "input_format": json.dumps(
            weights.input_format)}
        save_file({k: v.contiguous() for k, v in weights.state_dict.items()}, str(path), metadata=meta)
        return path
    return save_checkpoint({"arch": arch, "options": weights.options, "input_format": weights.input_format,
                            "state_dict": weights.state_dict}, path)


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
        raise UserError(f"{weights.source}: weights of {looks_like} do not fit {arch}: "
                        + "; ".join(p for p in problems if p))
    model.load_state_dict(given, strict=False)
