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
- `detectron2`: detectron2 ResNet / Faster R-CNN C4 keys (`backbone.res2.0.conv1.norm.weight`,
  `roi_heads.res5.*`); the RPN and box-predictor tensors it also holds go to `WeightFile.extra`.
DDP's `module.` prefix is dropped.
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
from engine.checkpoint import atomic_output, load_weights_only, save_checkpoint
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
    format: str = "torchvision"  # one of FORMATS: the layout the file was written in
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # detector heads, in the file's own names
    record: dict[str, Any] = field(default_factory=dict)  # what our runs record beside the weights (RECORD_KEYS)

    @property
    def is_our_detector(self) -> bool:
        """A whole detector of ours (`train_det.py`'s model_final.pth / model_best.pth / checkpoints)."""
        return self.record.get("kind") == "faster_rcnn"


# metadata our checkpoints carry beside the weights: a detector's kind, config and classes; a classifier's
# class names and the test transform that reproduces its reported error
RECORD_KEYS = ("kind", "config", "class_names", "category_ids", "test")


FORMATS = ("ours", "torchvision", "timm", "msra", "detectron2")


class _NdarrayType:
    """Stands for `numpy.ndarray` in a pickle: only `_reconstruct` may name it; calling it (which would
    allocate an array of any shape the file declares) is refused."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray")


_NDARRAY = _NdarrayType()


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """What numpy's pickled `_reconstruct` does: an empty array (numpy writes shape (0,)) that the pickle then
    fills with `__setstate__`, which checks its bytes against the declared shape before allocating. A larger
    start shape would allocate whatever the file declares: refused."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"refusing array subtype {subtype!r}")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
            and int(np.prod(shape, dtype=np.int64)) <= 1):
        raise pickle.UnpicklingError(f"refusing an array pre-allocated with shape {shape!r}")
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(dtype))


def _plain_dtype(*args: Any) -> np.dtype:
    """`numpy.dtype(...)` for numbers, booleans and fixed-size strings; object arrays (which unpickle arbitrary
    objects) are refused."""
    try:
        dtype = np.dtype(*args)
    except TypeError as exc:
        raise pickle.UnpicklingError(f"refusing dtype {args!r} ({exc})") from None
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing an array of Python objects (dtype {dtype})")
    return dtype


class NumpyUnpickler(pickle.Unpickler):
    """Builds only plain containers, strings, bytes and numpy arrays of numbers or fixed-size strings: what
    CIFAR-10 batches and the model-zoo pickles hold. Any other global (a function to call, a class to build),
    an object array, or an array whose declared size its bytes do not back, is refused before allocating."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _empty_array,
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def load_numpy_pickle(path: str | os.PathLike, encoding: str, failure: str) -> Any:
    """Unpickle `path` with `NumpyUnpickler`; anything it refuses or cannot read is `<path>: <failure> (...)`."""
    try:
        with open(path, "rb") as f:
            return NumpyUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError) as exc:
        raise UserError(f"{path}: {failure} ({exc or type(exc).__name__})") from None


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
    if any(DETECTRON2_KEY.match(k) for k in state_dict):
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


def timm_vgg_to_state_dict(state: StateDict) -> dict[str, torch.Tensor]:
    """timm's VGG runs fc6/fc7 as 7x7 and 1x1 convs (`pre_logits.fc1/fc2`) and names fc8 `head.fc`; as
    linear layers in torchvision's keys (a 7x7 conv on a 7x7 map is the linear layer on the flattened map)."""
    renamed = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}
    out = {}
    for key, value in state.items():
        layer, _, attr = key.rpartition(".")
        name = renamed.get(layer)
        if name is None:
            out[key] = value
        else:
            out[f"{name}.{attr}"] = value.flatten(1) if attr == "weight" else value
    return out


DETECTRON2_KEY = re.compile(r"(backbone\.(bottom_up\.)?)?(stem\.conv1|res[2-5]\.\d+)\.|proposal_generator\.")
# the parts of a detectron2 Faster R-CNN besides its ResNet: kept aside for detection.weights
DETECTRON2_HEADS = ("proposal_generator.rpn_head.", "roi_heads.box_predictor.", "roi_heads.box_head.",
                    "backbone.fpn_lateral", "backbone.fpn_output")


def _detectron2_resnet_key(key: str) -> str | None:
    """torchvision-style classifier key of a detectron2 ResNet tensor (None: not part of the ResNet).
    The C4 detector keeps res5 in its RoI head (`roi_heads.res5.*`), the FPN one under `backbone.bottom_up.`."""
    key = key.removeprefix("backbone.").removeprefix("bottom_up.").removeprefix("roi_heads.")
    if m := re.fullmatch(r"stem\.conv1(\.norm)?\.(\w+)", key):
        return ("bn1." if m.group(1) else "conv1.") + m.group(2)
    if m := re.fullmatch(r"res([2-5])\.(\d+)\.(conv[1-3]|shortcut)(\.norm)?\.(\w+)", key):
        stage, block, layer, norm, attr = m.groups()
        if layer == "shortcut":
            layer = "downsample.1" if norm else "downsample.0"
        elif norm:
            layer = "bn" + layer[-1]
        return f"layer{int(stage) - 1}.{block}.{layer}.{attr}"
    return None


def detectron2_weights(state: StateDict, source: str) -> WeightFile:
    """A detectron2 ResNet or Faster R-CNN (C4, FPN) state dict: the ResNet in our classifier keys, the FPN, RPN
    and box head and predictor in `extra` (detectron2's names), and the input convention (stored pixel mean/std
    when the file has them, detectron2's BGR default otherwise)."""
    resnet, extra = {}, {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std") or key.endswith("num_batches_tracked"):
            continue
        if (ours := _detectron2_resnet_key(key)) is not None:
            resnet[ours] = value.float()
        elif key.startswith(DETECTRON2_HEADS):
            extra[key] = value.float()
        else:
            raise UserError(f"{source}: unexpected key {key!r} for a detectron2 ResNet / Faster R-CNN (C4 or FPN; "
                            "masks, keypoints and other heads have no counterpart here)")
    # detectron2's defaults (RESNETS.STRIDE_IN_1X1 for bottleneck blocks, INPUT.FORMAT, PIXEL_MEAN/STD): MSRA's
    options = {"stride_in_1x1": True} if "layer1.0.conv3.weight" in resnet else {}
    input_format = dict(MSRA_INPUT)
    if "pixel_mean" in state:  # older detectron2 files store them; the order is blue-first when mean[0] < mean[2]
        mean, std = (state[k].flatten().tolist() for k in ("pixel_mean", "pixel_std"))
        input_format = {"pixel_mean": mean, "pixel_std": std, "channel_order": "BGR" if mean[0] < mean[2] else "RGB"}
    return WeightFile(resnet, source, guess_arch(resnet), options, input_format, "detectron2", extra)


TORCHVISION_DETECTOR_BODY = "backbone.body."


def torchvision_detector_weights(state: StateDict, source: str) -> WeightFile:
    """A torchvision Faster R-CNN state dict (`fasterrcnn_resnet50_fpn`): its ResNet (`backbone.body.*`) in our
    classifier keys, the FPN, RPN and RoI heads in `extra` (torchvision's names). The file's BN layout tells the
    frozen BN its model runs with: `FrozenBatchNorm2d` buffers (the published weights, which torchvision runs
    with epsilon 0, as a scale and a shift) or `BatchNorm2d` ones (with `num_batches_tracked`: epsilon 1e-5,
    PyTorch's batch_norm kernel); `record["frozen_bn"]`."""
    body = {k.removeprefix(TORCHVISION_DETECTOR_BODY): v for k, v in state.items()
            if k.startswith(TORCHVISION_DETECTOR_BODY) and not k.endswith("num_batches_tracked")}
    extra = {k: v for k, v in state.items() if not k.startswith(TORCHVISION_DETECTOR_BODY)}
    batchnorm = any(k.endswith("num_batches_tracked") for k in state)
    frozen_bn = {"eps": 1e-5, "fused": True} if batchnorm else {"eps": 0.0, "fused": False}
    return WeightFile(body, source, guess_arch(body), {}, {}, "torchvision", extra,
                      record={"kind": "torchvision_detector", "frozen_bn": frozen_bn})


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
