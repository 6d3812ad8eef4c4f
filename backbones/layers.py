"""Small layers shared by the backbones: frozen BatchNorm and the parameter-free shortcut (option A)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm as a fixed per-channel affine map: statistics and affine parameters are buffers.

    The paper freezes BN after ImageNet pre-training when fine-tuning detectors (small batches would
    make the statistics noisy). The state-dict keys equal `nn.BatchNorm2d`'s, so weights load either way.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, fused: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.fused = fused  # eager inference through PyTorch's batch_norm kernel (detectron2), else scale and shift
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A BatchNorm2d state dict carries a counter that has no meaning once frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Eager inference uses the fused eval-mode kernel, as detectron2 does: imported detectors then give its
        # detections to the last bit. With gradients, when exporting (its decomposition cannot take a batch of
        # data-dependent size, as the RoIs), and with `fused` off (torchvision's own FrozenBatchNorm2d, which its
        # published detector weights run with), the same map written out as a scale and a shift.
        if self.fused and not x.requires_grad and not torch.compiler.is_compiling():
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, fused={self.fused}"

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of `bn`'s running statistics and affine parameters."""
        frozen = cls(bn.num_features, bn.eps).to(bn.running_mean.device)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
        return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every `nn.BatchNorm2d` inside `module` (or `module` itself) by `FrozenBatchNorm2d`."""
    if isinstance(module, nn.BatchNorm2d):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        frozen = freeze_batchnorm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module


@torch.no_grad()
def fold_conv_batchnorm(conv: nn.Conv2d, bn: FrozenBatchNorm2d | nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing `bn(conv(x))` of an eval-mode BN: weights scaled per output channel, the BN's
    shift as the bias. The same map up to float rounding, one pass over the activations instead of two."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return folded


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """In place, for inference: every frozen BN that directly follows a convolution (`convK` / `bnK` of a block,
    or neighbours in an `nn.Sequential`) is folded into it and replaced by `nn.Identity`. Trainable BN is left
    alone. The state dict changes (no BN buffers): fold a copy, keep the original for training and saving."""
    for child in module.children():
        fold_frozen_batchnorm(child)
    names = dict(module.named_children())
    pairs = [(f"conv{k}", f"bn{k}") for k in range(1, 10)]
    if isinstance(module, nn.Sequential):
        keys = list(names)
        pairs += list(itertools.pairwise(keys))
    for conv_name, bn_name in pairs:
        conv, bn = names.get(conv_name), names.get(bn_name)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
            setattr(module, conv_name, fold_conv_batchnorm(conv, bn))
            setattr(module, bn_name, nn.Identity())
            names[conv_name], names[bn_name] = getattr(module, conv_name), getattr(module, bn_name)
    return module


class ZeroPadShortcut(nn.Module):
    """Shortcut option A: identity subsampled by `stride`, extra output channels filled with zeros."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"zero-padding shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}"


@torch.no_grad()
def calibrate_frozen_batchnorm(model: nn.Module, run: Callable[[], object],
                               bn_types: tuple[type[nn.Module], ...] = (FrozenBatchNorm2d,)) -> None:
    """Set every `FrozenBatchNorm2d` of `model` to normalise what it sees during `run()` (one forward pass):
    its running mean and variance become its input's per-channel statistics (a data-dependent start, as
    precise BN on one batch; used to make randomly initialised models well-conditioned for parity checks).
    `bn_types`: the frozen-BN classes to calibrate (another library's, with the same buffers, too)."""

    def set_statistics(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        module.running_mean.copy_(inputs[0].mean(dim=(0, 2, 3)))
        module.running_var.copy_(inputs[0].var(dim=(0, 2, 3)) + 1e-3)

    handles = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, bn_types)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
