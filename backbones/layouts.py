"""The key maps of the weight layouts other libraries write, each to our (torchvision's) classifier keys: MSRA /
Caffe2 blobs, timm's VGG, detectron2's ResNet (alone or inside a Faster R-CNN), torchvision's Faster R-CNN body;
and telling the architecture from torchvision-style keys (`guess_arch`). What a detector holds besides its ResNet
is kept aside (`WeightFile.extra`) for `detection.weights`, which knows those names."""

from __future__ import annotations

import re

import numpy as np
import torch

from backbones.resnet import IMAGENET_DEPTHS, Bottleneck
from backbones.weight_file import StateDict, WeightFile
from engine.errors import UserError

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


DETECTRON2_KEY = re.compile(r"(backbone\.(bottom_up\.)?)?(stem\.conv1|res[2-5]\.\d+)\.")


def is_detectron2_key(key: str) -> bool:
    """A key of detectron2's ResNet (alone, the trunk of a C4 detector, or under an FPN's `bottom_up`)."""
    return DETECTRON2_KEY.match(key) is not None


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
    """A detectron2 ResNet or Faster R-CNN (C4, FPN) state dict: the ResNet in our classifier keys, everything
    else (the detector's FPN, RPN and box head, in detectron2's names) in `extra`, and the input convention (stored
    pixel mean/std when the file has them, detectron2's BGR default otherwise)."""
    resnet, extra = {}, {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std") or key.endswith("num_batches_tracked"):
            continue
        if (ours := _detectron2_resnet_key(key)) is not None:
            resnet[ours] = value.float()
        else:
            extra[key] = value.float()
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
