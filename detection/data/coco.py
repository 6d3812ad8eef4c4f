"""COCO-format detection data through pycocotools: COCO 2017, the synthetic shapes set, or a user's own."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detection.data.common import BoxSanitizer, DetectionDataset, GroundTruth, resolve_inside, warn_skipped_classes
from engine.errors import UserError
from engine.images import image_size
from engine.logs import get_logger

logger = get_logger("detection")

# The 80 COCO detection categories in increasing category id: the contiguous class order of models trained
# on COCO (detectron2's model zoo among them).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; a missing or malformed one is a `UserError` naming it (`what`: its role)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: malformed JSON ({exc})") from None


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_coco_json(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                   ignore_unknown_classes: bool = False) -> dict[str, Any]:
    """Parse and check a COCO annotation file, filling what real files often leave out, so that training and
    pycocotools' evaluation never meet a missing key later: `info`, `licenses`, per annotation `iscrowd` (0),
    `area` (the box's, also where a tool wrote 0), `segmentation` ([]) and `id` (numbered when absent or
    repeated), per image `width` and `height` (from the image's header in `image_root`). Labelling tools' quirks
    read as meant: a category that no annotation uses and that is the `supercategory` of all the others
    (Roboflow's parent category) is not a class (one line says so). Problems name the file and the entry; an
    annotation of an unknown category is one, or with `ignore_unknown_classes` left out and counted."""
    path = Path(path)
    data = load_json(path, "annotation file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a COCO annotation file holds an object, got {type(data).__name__}")
    data.setdefault("annotations", [])  # image-info files of unannotated sets (COCO test-dev) have none
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: missing list {key!r}")
    required = {"images": ("id",), "annotations": ("image_id", "category_id", "bbox"), "categories": ("id", "name")}
    for key, fields in required.items():
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise UserError(f"{path}: {key}[{i}] lacks {', '.join(missing)}")
    for key in ("images", "categories"):
        ids = [entry["id"] for entry in data[key]]
        bad = next((v for v in ids if not is_integer(v)), None)
        if bad is not None:
            raise UserError(f"{path}: {key} id {bad!r} is not an integer")
        repeated = [v for v, n in Counter(ids).items() if n > 1]
        if repeated:
            raise UserError(f"{path}: {key} id {repeated[0]} appears {ids.count(repeated[0])} times")
    for i, img in enumerate(data["images"]):
        img.setdefault("file_name", "")
        if not all(is_integer(img.get(k)) and img[k] > 0 for k in ("width", "height")):
            if any(k in img for k in ("width", "height")) or image_root is None or not img["file_name"]:
                raise UserError(f"{path}: images[{i}] (id {img['id']}) needs a positive integer width and height")
            img["width"], img["height"] = image_size(resolve_inside(Path(image_root), img["file_name"],
                                                                    f"{path} image {img['id']}"))
    image_ids = {img["id"] for img in data["images"]}
    data["categories"] = drop_parent_category(data["categories"], data["annotations"], path)
    cat_ids = {cat["id"] for cat in data["categories"]}
    unknown: Counter = Counter()
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if ann["category_id"] not in cat_ids:
            if ignore_unknown_classes:
                unknown[ann["category_id"]] += 1
                continue
            raise UserError(f"{where} has unknown category_id {ann['category_id']!r}; skip such objects with "
                            "--ignore-unknown-classes")
        if ann["image_id"] not in image_ids:
            raise UserError(f"{where} refers to unknown image_id {ann['image_id']!r}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
            raise UserError(f"{where} has bbox {bbox!r}; expected [x, y, width, height], four finite numbers")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("segmentation", [])
        if not is_finite_number(ann.get("area")) or ann["area"] <= 0:  # CVAT and Label Studio write 0 for boxes
            ann["area"] = float(max(0.0, bbox[2]) * max(0.0, bbox[3]))
        if ann["iscrowd"] not in (0, 1):
            raise UserError(f"{where} has iscrowd {ann['iscrowd']!r}; expected 0 or 1")
    if unknown:
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in cat_ids]
        warn_skipped_classes(str(path), unknown, "annotations of unknown categories", id_prefix="id ")
    ann_ids = [ann.get("id") for ann in data["annotations"]]
    if any(not is_integer(v) for v in ann_ids) or len(set(ann_ids)) != len(ann_ids):
        for n, ann in enumerate(data["annotations"], start=1):  # pycocotools indexes annotations by id
            ann["id"] = n
    return data


def drop_parent_category(categories: list[dict[str, Any]], annotations: list[dict[str, Any]],
                         source: str | os.PathLike) -> list[dict[str, Any]]:
    """The categories without a parent that is no class: one that no annotation uses and whose name is the
    `supercategory` of every other category (Roboflow writes one, often with id 0)."""
    used = {a.get("category_id") for a in annotations}
    for cat in categories:
        others = [c for c in categories if c is not cat]
        if cat["id"] not in used and others and all(c.get("supercategory") == cat["name"] for c in others):
            logger.info(f"{source}: category {cat['name']!r} (id {cat['id']}) is the parent of the others and labels "
                        "no object: not a class")
            return others
    return categories


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over `data`, without its progress prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(DetectionDataset):
    """Images of a COCO-format annotation file under `image_root`.

    Category ids map to contiguous labels 1..K in sorted id order (`label_to_category` maps back for
    results files). Crowd boxes are ignored objects: left out of training targets, ignored by VOC metrics,
    handled by COCOeval itself. Training skips images without any usable box unless `keep_empty`.
    """

    def __init__(self, ann_file: str | os.PathLike, image_root: str | os.PathLike | None,
                 transform: Callable | None = None, *, train: bool = False, keep_empty: bool | None = None,
                 ignore_unknown_classes: bool = False) -> None:
        super().__init__(transform, train)
        self.ann_file = Path(ann_file)
        self.image_root = None if image_root is None else Path(image_root)  # None: annotations only
        if self.image_root is not None and not self.image_root.is_dir():
            raise UserError(f"{self.image_root}: image folder not found")
        data = read_coco_json(self.ann_file, self.image_root, ignore_unknown_classes)
        self.coco = coco_from_dict(data)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names = [c["name"] for c in cats]
        self.label_to_category = {i + 1: c["id"] for i, c in enumerate(cats)}
        category_to_label = {cid: label for label, cid in self.label_to_category.items()}
        sanitize = BoxSanitizer(str(self.ann_file))
        keep_empty = not train if keep_empty is None else keep_empty
        self.records, self.file_names = [], []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            anns = self.coco.imgToAnns.get(image_id, [])
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            keep = sanitize(boxes, info["width"], info["height"])
            labels = np.array([category_to_label[a["category_id"]] for a in anns], dtype=np.int64)
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
            rec = GroundTruth(image_id, str(info["file_name"]), int(info["width"]), int(info["height"]),
                              boxes[keep], labels[keep], crowd[keep])
            if not keep_empty and not (~rec.ignore).any():
                continue
            self.records.append(rec)
            self.file_names.append(info["file_name"])
        sanitize.report()

    def image_path(self, index: int) -> Path:
        rec = self.records[index]
        if self.image_root is None:
            raise UserError(f"{self.ann_file}: no image folder given, only the annotations can be used")
        return resolve_inside(self.image_root, self.file_names[index], f"{self.ann_file} image {rec.image_id}")
