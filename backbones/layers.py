"""Small layers shared by the backbones: the normalisation choices (frozen BN, BN, synchronised BN, GroupNorm)
and the parameter-free shortcut (option A)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

# what `model.norm` may be: a fixed affine map (fine-tuning from ImageNet weights, the paper's choice), batch
# statistics (torchvision without weights), batch statistics over every process (torchrun), GroupNorm
# (32 groups, independent of the batch: detectron2's recipes for training from scratch)
NORMS = ("frozen_bn", "bn", "syncbn", "gn")
GN_GROUPS = 32


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


class SyncBatchNorm2d(nn.SyncBatchNorm):
    """BatchNorm whose training statistics are those of the whole batch over every process of the group.

    On CUDA it is PyTorch's `SyncBatchNorm`. PyTorch's kernel does not run on the CPU (Gloo), so there the
    per-channel sums are all-reduced with an autograd-aware all-reduce (detectron2's NaiveSyncBatchNorm idea,
    weighted by each process's number of values so that unequal shares still give the statistics of the union).
    Outside a process group, or in eval mode, it is plain BatchNorm. State-dict keys equal `nn.BatchNorm2d`'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.is_cuda or not self.training or not dist.is_available() or not dist.is_initialized()
                or dist.get_world_size(self.process_group or dist.group.WORLD) == 1):
            return super().forward(x)
        channels = x.shape[1]
        count = x.new_tensor([x.numel() / channels])
        sums = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        sums = differentiable_all_reduce(sums, group=self.process_group or dist.group.WORLD)
        total = sums[-1]
        mean, mean_sq = sums[:channels] / total, sums[channels:2 * channels] / total
        var = (mean_sq - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        scale = (var + self.eps).rsqrt()
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0.0)
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def group_norm(channels: int, groups: int = GN_GROUPS) -> nn.GroupNorm:
    """GroupNorm with `groups` groups (detectron2's 32), or the largest divisor of `channels` below that for the
    narrow networks of tests and CPU demos."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """A fresh normalisation layer for a new convolution (FPN, box head): `none` is no layer. `frozen_bn` is not
    offered: a frozen map that was never trained is the identity."""
    layers = {"none": lambda: None, "bn": lambda: nn.BatchNorm2d(channels),
              "syncbn": lambda: SyncBatchNorm2d(channels), "gn": lambda: group_norm(channels)}
    if norm not in layers:
        raise ValueError(f"norm of a new layer must be one of {', '.join(layers)}, got {norm!r}")
    return layers[norm]()


def _convert(bn: _BatchNorm, norm: str) -> nn.Module:
    """One BatchNorm as the `norm` kind, carrying over what the kind keeps (statistics and / or affine map)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d.from_batchnorm(bn)
    if norm == "gn":
        new: nn.Module = group_norm(bn.num_features)
        new.to(bn.weight.device)
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
        return new
    new = (SyncBatchNorm2d if norm == "syncbn" else nn.BatchNorm2d)(bn.num_features, bn.eps, bn.momentum)
    new.to(bn.weight.device)
    new.load_state_dict(bn.state_dict())
    return new


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Every trainable BatchNorm inside `module` (or `module` itself) as `norm` (see `NORMS`); returns the module.
    Frozen BN keeps its statistics exactly; `gn` keeps the affine parameters and drops the statistics."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if isinstance(module, _BatchNorm):
        unchanged = {"bn": nn.BatchNorm2d, "syncbn": SyncBatchNorm2d}.get(norm)
        return module if type(module) is unchanged else _convert(module, norm)
    for name, child in module.named_children():
        converted = convert_norm(child, norm)
        if converted is not child:
            setattr(module, name, converted)
    return module


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (plain or synchronised) inside `module` (or `module` itself) by
    `FrozenBatchNorm2d` with its statistics."""
    return convert_norm(module, "frozen_bn")


@torch.no_grad()
def fold_conv_batchnorm(conv: nn.Conv2d, bn: FrozenBatchNorm2d | nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing `bn(conv(x))` of an eval-mode BN (PyTorch's `fuse_conv_bn_weights`: weights scaled
    per output channel, the BN's shift as the bias). The same map up to float rounding, one pass over the
    activations instead of two."""
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight, folded.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
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
