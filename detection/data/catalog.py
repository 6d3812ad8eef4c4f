"""Dataset names the tools accept, and where each keeps its files under `--data DIR`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from detection.data.coco import CocoDetection
from detection.data.common import DetectionDataset
from detection.data.voc import VOC_SETS, VOCDetection
from engine.errors import UserError

DATASETS = ("coco", "shapes", *VOC_SETS)
DEFAULT_SPLITS = {"coco": ("train2017", "val2017"), "shapes": ("train", "val"), "voc07": ("trainval", "test"),
                  "voc12": ("trainval", "val"), "voc0712": ("trainval", "test"), "voc07++12": ("trainval", "test")}


def build_detection_dataset(name: str, root: str | os.PathLike, split: str | None = None, *,
                            transform: Callable | None = None, train: bool = False,
                            keep_empty: bool = False) -> DetectionDataset:
    """`coco` / `shapes`: `root/annotations/instances_<split>.json` with images in `root/<split>/`;
    VOC sets: `root` is the VOCdevkit folder. `split` defaults to the set's train or test split. Training
    sets skip COCO-format images without objects unless `keep_empty`."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    split = split or DEFAULT_SPLITS[name][0 if train else 1]
    if name in ("coco", "shapes"):
        return CocoDetection(root / "annotations" / f"instances_{split}.json", root / split, transform, train=train,
                             keep_empty=keep_empty or not train)
    return VOCDetection(root, name, split, transform, train=train)
