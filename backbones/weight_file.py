"""`WeightFile`: a state dict in our (torchvision's) classifier keys and what its file says about it, whatever
layout the file was written in (`FORMATS`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

StateDict = Mapping[str, torch.Tensor]
FORMATS = ("ours", "torchvision", "timm", "msra", "detectron2")
# metadata our checkpoints carry beside the weights: a detector's kind, config and classes; a classifier's
# class names and the test transform that reproduces its reported error
RECORD_KEYS = ("kind", "config", "class_names", "category_ids", "test")


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

