"""Networks as feature extractors: named stages with known channels and strides (detectron2's ShapeSpec
idea), freezing, the normalisation choice (frozen BN, BN, synchronised BN, GroupNorm), and the trunk/head split
the C4 detector needs."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from backbones.layers import convert_norm, freeze_batchnorm
from backbones.registry import build_model
from backbones.resnet import Stage
from backbones.weights import load_weights, read_weights
from engine.errors import UserError


class ShapeSpec(NamedTuple):
    """Channels and stride (w.r.t. the input image) of a feature map."""

    channels: int
    stride: int


def _stages_of(model: nn.Module) -> list[Stage]:
    if not hasattr(model, "stages"):
        raise UserError(f"{type(model).__name__} has no named stages to extract features from")
    return model.stages()


class Backbone(nn.Module):
    """Runs a network's stages in order and returns the requested ones as `{name: feature map}`.

    Stages after the last requested one are not kept. Module keys are `<stage>.<torchvision key>`,
    e.g. `res2.0.conv1.weight`, `stem.conv1.weight`.
    """

    def __init__(self, stages: Sequence[Stage], out_features: Sequence[str] | None = None) -> None:
        super().__init__()
        names = [s.name for s in stages]
        out_features = list(out_features) if out_features else names[-1:]
        unknown = [n for n in out_features if n not in names]
        if unknown:
            raise UserError(f"unknown feature(s) {', '.join(unknown)}; this network has {', '.join(names)}")
        last = max(names.index(n) for n in out_features)
        kept = stages[: last + 1]
        self.stages = nn.ModuleDict((s.name, s.module) for s in kept)
        self.out_features = out_features
        self._shapes = {s.name: ShapeSpec(s.channels, s.stride) for s in kept}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self.out_features}

    def freeze(self, at: int) -> Backbone:
        """Freeze the first `at` stages (1 = stem, 2 = stem and res2, as detectron2's FREEZE_AT):
        no gradients, and their BatchNorm becomes a fixed affine map (GroupNorm stays, without gradients)."""
        if not 0 <= at <= len(self.stages):
            raise UserError(f"freeze_at must be in 0..{len(self.stages)}, got {at}")
        for name in list(self.stages)[:at]:
            stage = freeze_batchnorm(self.stages[name])
            stage.requires_grad_(False)
            self.stages[name] = stage
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs


def backbone_from_model(model: nn.Module, out_features: Sequence[str] | None = None, *, freeze_at: int = 0,
                        norm: str = "bn") -> Backbone:
    """Feature extractor over the stages of a registry classifier (weights shared, classifier head dropped), its
    BatchNorm layers as `norm` (`backbones.layers.NORMS`), its first `freeze_at` stages frozen."""
    backbone = Backbone(_stages_of(model), out_features)
    convert_norm(backbone, norm)
    return backbone.freeze(freeze_at)


def split_model(model: nn.Module, trunk_end: str = "res4", *, freeze_at: int = 0,
                norm: str = "bn") -> tuple[Backbone, nn.Module, ShapeSpec]:
    """Split a classifier into a shared trunk ending at `trunk_end` and the remaining stages as a head.

    With the default `res4` this is the paper's ResNet "C4" design: conv1..conv4_x run on the whole image
    (stride 16), conv5_x runs per region. Returns (trunk, head, head output shape); the head's first block
    keeps its stride 2. A single remaining stage is returned as it is (`res5`: its blocks `0`, `1`, ...),
    several as a `Sequential` named by stage.
    """
    stages = _stages_of(model)
    names = [s.name for s in stages]
    if trunk_end not in names[:-1]:
        raise UserError(f"cannot split {type(model).__name__} after {trunk_end!r}; "
                        f"split points: {', '.join(names[:-1])}")
    cut = names.index(trunk_end) + 1
    trunk = backbone_from_model(model, [trunk_end], freeze_at=freeze_at, norm=norm)
    rest = stages[cut:]
    head = rest[0].module if len(rest) == 1 else nn.Sequential(OrderedDict((s.name, s.module) for s in rest))
    head = convert_norm(head, norm)
    return trunk, head, ShapeSpec(stages[-1].channels, stages[-1].stride)


def build_backbone(name: str, out_features: Sequence[str] | None = None, *, freeze_at: int = 0,
                   norm: str = "bn", weights: str | os.PathLike | None = None, **options) -> Backbone:
    """The registered network `name` as a feature extractor, optionally initialised from a weight file
    (its classifier head is not loaded); `norm` and `freeze_at` as in `backbone_from_model`."""
    model = build_model(name, **options)
    if weights is not None:
        load_weights(model, read_weights(weights), arch=name, skip_prefixes=model_head_prefixes(model))
    return backbone_from_model(model, out_features, freeze_at=freeze_at, norm=norm)


def model_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier's last layer, which a feature extractor does not use."""
    return ("classifier.6.",) if hasattr(model, "classifier") else ("fc.",)
