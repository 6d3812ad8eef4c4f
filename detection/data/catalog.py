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
                            keep_empty: bool = False, annotated: bool = True) -> DetectionDataset:
    """`coco` / `shapes`: `root/annotations/instances_<split>.json` with images in `root/<split>/`;
    VOC sets: `root` is the VOCdevkit folder. `split` defaults to the set's train or test split. Training
    sets skip COCO-format images without objects unless `keep_empty`. `annotated=False`: a VOC split whose
    annotations are not public (COCO's test-dev image-info json needs no flag)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    split = split or DEFAULT_SPLITS[name][0 if train else 1]
    if name in ("coco", "shapes"):
        ann_file = root / "annotations" / f"instances_{split}.json"
        if not ann_file.exists() and (root / "annotations" / f"image_info_{split}.json").exists():
            ann_file = root / "annotations" / f"image_info_{split}.json"  # test-dev: images only, no objects
        images = root / split
        if not images.is_dir() and "test-dev" in split:  # COCO keeps test-dev's images in test2017/
            images = root / split.replace("test-dev", "test")
        return CocoDetection(ann_file, images, transform, train=train, keep_empty=keep_empty or not train)
    return VOCDetection(root, name, split, transform, train=train, annotated=annotated)
