"""Dataset names the tools accept, where each keeps its files, and the one function that builds a training or
evaluation set from the `data` section of a config (`detection.train.DEFAULTS["data"]`).

- `coco` / `shapes`: a COCO-format json and its image folder: `data.train_ann` / `data.val_ann` (any file
  names; images in `data.train_images` / `data.val_images`, by default the json's own folder), or under
  `data.root` the COCO layout `annotations/instances_<split>.json` with images in `<split>/`.
- `voc`: a VOC-layout folder of one's own (`data.root`, classes from `data.classes` or its annotations).
- `yolo`: an ultralytics-layout YOLO dataset, `data.root` its `data.yaml` (splits `train`, `val`, `test`).
- `labelme`: a folder of LabelMe jsons (`data.root`; splits are list files, or every json of the folder).
- `voc07`, `voc12`, `voc0712`, `voc07++12`: the PASCAL VOC named sets in a VOCdevkit folder (`data.root`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detection.data.coco import CocoDetection
from detection.data.common import DetectionDataset
from detection.data.labelme import LabelMeDetection
from detection.data.voc import CUSTOM_VOC, VOC_SETS, VOCDetection
from detection.data.yolo import YOLODetection, read_data_yaml
from engine.errors import UserError

DATASETS = ("coco", "shapes", CUSTOM_VOC, "yolo", "labelme", *VOC_SETS)
DEFAULT_SPLITS = {"coco": ("train2017", "val2017"), "shapes": ("train", "val"), CUSTOM_VOC: ("trainval", "test"),
                  "yolo": ("train", "val"), "labelme": (None, None), "voc07": ("trainval", "test"),
                  "voc12": ("trainval", "val"), "voc0712": ("trainval", "test"), "voc07++12": ("trainval", "test")}


# the data flags the tools share (train_det.py, make_crops.py) -> keys of a config's `data` section
DATA_FLAG_KEYS = {"dataset": "dataset", "data": "root", "train_ann": "train_ann", "train_images": "train_images",
                  "val_ann": "val_ann", "val_images": "val_images", "train_split": "train_split",
                  "val_split": "val_split", "classes": "classes", "ignore_unknown_classes": "ignore_unknown_classes"}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name a training set and its evaluation set (`DATA_FLAG_KEYS`), in a `data` group."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="coco: a COCO json; voc: a VOC-layout folder of your own; "
                      "yolo: an ultralytics data.yaml; labelme: a folder of LabelMe jsons")
    data.add_argument("--data", help="COCO root (annotations/, <split>/), a VOC-layout or LabelMe folder, a YOLO "
                      "data.yaml, or the VOCdevkit")
    data.add_argument("--train-ann", help="COCO json of the training set (any name)")
    data.add_argument("--train-images", help="its image folder (default: the json's folder)")
    data.add_argument("--val-ann", help="COCO json of the evaluation set")
    data.add_argument("--val-images", help="its image folder (default: the json's folder)")
    data.add_argument("--train-split", help="image list: a name in ImageSets/Main/ or a file (default trainval; YOLO: "
                      "train; LabelMe: every json)")
    data.add_argument("--val-split", help="image list for evaluation (default test; YOLO: val)")
    data.add_argument("--classes", type=parse_class_names, help="VOC-layout and LabelMe data: a,b,c or a file with "
                      "one name per line (default: the classes its training annotations use)")
    data.add_argument("--ignore-unknown-classes", action="store_true", default=None,
                      help="skip (and count) objects of other classes instead of stopping")


def parse_class_names(value: str | Sequence[str] | None) -> list[str] | None:
    """`--classes`: `a,b,c`, or a text file with one name per line (a list passes through)."""
    if value is None or not isinstance(value, str):
        return None if value is None else [str(v) for v in value]
    if Path(value).is_file():
        names = [line.strip() for line in Path(value).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise UserError(f"--classes {value!r}: give distinct names, as a,b,c or a file with one name per line")
    return names


def build_detection_dataset(data: Mapping[str, Any], *, train: bool, transform: Callable | None = None,
                            split: str | None = None, class_names: Sequence[str] | None = None,
                            annotated: bool = True, optional: bool = False,
                            role: str | None = None) -> DetectionDataset | None:
    """The training (`train=True`) or evaluation set that `data` describes (see the module docstring); `role`
    (`train` / `val`, by default as `train`) picks whose files and split are read, `train` how (training targets,
    images without objects skipped).

    `split` overrides the config's split; `class_names` (the training set's) must be the evaluation set's too.
    Training sets skip COCO-format images without objects unless `data.keep_empty`. `annotated=False`: a VOC
    split whose annotations are not public. `optional=True`: None instead of an error when the evaluation set
    was not named and its default (e.g. `ImageSets/Main/test.txt`) does not exist.
    """
    name, role = data["dataset"], role or ("train" if train else "val")
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    named_split = split or data.get(f"{role}_split")
    split = named_split or DEFAULT_SPLITS[name][0 if role == "train" else 1]
    explicit = parse_class_names(data.get("classes"))
    wanted = explicit or (list(class_names) if class_names else None)
    ann_file = data.get(f"{role}_ann")
    if name in ("coco", "shapes"):
        if ann_file:
            images = data.get(f"{role}_images") or Path(ann_file).parent
        else:
            if data.get("root") is None and optional:
                return None
            root = _root(data)
            ann_file = root / "annotations" / f"instances_{split}.json"
            if not ann_file.exists() and (root / "annotations" / f"image_info_{split}.json").exists():
                ann_file = root / "annotations" / f"image_info_{split}.json"  # test-dev: images only, no objects
            if optional and not named_split and not ann_file.exists():
                return None
            images = root / split
            if not images.is_dir() and "test-dev" in split:  # COCO keeps test-dev's images in test2017/
                images = root / split.replace("test-dev", "test")
        dataset = CocoDetection(ann_file, images, transform, train=train,
                                keep_empty=bool(data.get("keep_empty")) or not train,
                                ignore_unknown_classes=bool(data.get("ignore_unknown_classes")))
        if wanted is not None and list(dataset.class_names) != wanted:
            whose = "--classes" if explicit else "the training set"
            raise UserError(f"{ann_file}: its categories are {', '.join(dataset.class_names)}, not those of "
                            f"{whose} ({', '.join(wanted)})")
        return dataset
    if ann_file:
        raise UserError(f"--{role}-ann is for COCO-format data; dataset {name} reads its files under --data")
    if name == "yolo":
        if data.get("root") is None:
            raise UserError("--data DIR/data.yaml is required for dataset yolo")
        if explicit is not None:
            raise UserError("--classes is not for YOLO data: the classes are the names of its data.yaml")
        if optional and not named_split and not read_data_yaml(data["root"]).get(split):
            return None
        return YOLODetection(data["root"], split, transform, train=train, class_names=wanted,
                             ignore_unknown_classes=bool(data.get("ignore_unknown_classes")))
    root = _root(data)
    if name == "labelme":
        if optional and not named_split:
            return None
        return LabelMeDetection(root, named_split, transform, train=train, class_names=wanted,
                                ignore_unknown_classes=bool(data.get("ignore_unknown_classes")))
    if optional and not named_split and name == CUSTOM_VOC and not (
            root / "ImageSets" / "Main" / f"{split}.txt").is_file():
        return None
    if explicit is not None and name != CUSTOM_VOC:
        raise UserError(f"--classes is for a VOC-layout folder of one's own (--dataset {CUSTOM_VOC}); {name} has "
                        "the 20 PASCAL VOC classes")
    return VOCDetection(root, name, split, transform, train=train, annotated=annotated,
                        class_names=wanted if name == CUSTOM_VOC else None,
                        ignore_unknown_classes=bool(data.get("ignore_unknown_classes")))


def _root(data: Mapping[str, Any]) -> Path:
    if data.get("root") is None:
        hint = {"shapes": " (make one with tools/make_shapes.py)", "coco": ", or --train-ann FILE"}.get(
            data["dataset"], "")
        raise UserError(f"--data DIR is required for dataset {data['dataset']}{hint}")
    root = Path(data["root"])
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    return root
