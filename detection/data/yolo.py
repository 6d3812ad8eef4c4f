"""YOLO-format datasets as ultralytics lays them out (what Roboflow, CVAT and Label Studio export as "YOLO"):
a `data.yaml` naming the splits and the classes, one `labels/*.txt` per image.

    path: ../datasets/mine      # the root; relative to the yaml's folder (default: that folder)
    train: images/train         # a folder of images (recursive), a list file of image paths, or a list of those
    val: images/val
    test: images/test           # optional
    names: [cat, dog]           # or {0: cat, 1: dog}

An image's label file is found by ultralytics' rule: the last `/images/` of its path becomes `/labels/` and the
extension `.txt`. Each line is `class cx cy w h`, normalised to 0..1 by the image's size, or a polygon `class x1 y1
x2 y2 ...` (a segmentation label), whose bounding box is used. An image without a label file, or with an empty
one, has no objects. Problems name the file and line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detection.data.common import BoxSanitizer, DetectionDataset, GroundTruth, warn_skipped_classes
from engine.errors import UserError
from engine.images import IMAGE_EXTENSIONS, image_size

YOLO_SPLITS = ("train", "val", "test")


def read_data_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset description, with `path` made absolute and `names` a list (index = class id)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "data.yaml", path / "data.yml") if p.is_file()]
        if not found:
            raise UserError(f"{path}: a YOLO dataset is given by its data.yaml (none in this folder)")
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: data.yaml not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise UserError(f"{path}: a YOLO data.yaml needs 'names' (and train / val)")
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise UserError(f"{path}: names must be numbered 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or len({str(n) for n in names}) != len(names):
        raise UserError(f"{path}: names must be a list (or a mapping 0..K-1) of distinct class names")
    if "nc" in data and data["nc"] != len(names):
        raise UserError(f"{path}: nc is {data['nc']} but {len(names)} names are given")
    root = Path(data.get("path") or ".")
    data["path"] = root if root.is_absolute() else (path.parent / root).resolve()
    data["names"] = [str(n) for n in names]
    data["_file"] = path
    return data


def split_images(data: dict[str, Any], split: str) -> list[Path]:
    """The image files of a split: its folders searched recursively, its list files read (paths relative to the
    root, or to the list file's folder when they start with `./`), in sorted order per source."""
    if not data.get(split):
        named = ", ".join(s for s in YOLO_SPLITS if data.get(s)) or "none"
        raise UserError(f"{data['_file']}: no {split!r} split (it names {named})")
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[Path] = []
    for entry in entries:
        source = Path(entry) if Path(entry).is_absolute() else data["path"] / entry
        if source.is_dir():
            images += sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif source.is_file():
            for line in source.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    images.append(source.parent / line if line.startswith("./") else
                                  Path(line) if Path(line).is_absolute() else data["path"] / line)
        else:
            raise UserError(f"{data['_file']}: {split} entry {entry!r} is neither a folder nor a list file "
                            f"(looked for {source})")
    if not images:
        raise UserError(f"{data['_file']}: the {split} split holds no images")
    return images


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last `/images/` of the path becomes `/labels/`, the extension `.txt`."""
    text = str(image)
    marker = f"{os.sep}images{os.sep}"
    if marker in text:
        head, tail = text.rsplit(marker, 1)
        text = f"{head}{os.sep}labels{os.sep}{tail}"
    return Path(os.path.splitext(text)[0] + ".txt")


def parse_label_file(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(normalised xyxy boxes (N, 4), class ids (N,), [(line number, unknown class id)]); a line that does not
    parse, or a coordinate outside 0..1, is a `UserError` naming the file and line."""
    boxes, classes, unknown = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(v) for v in fields[1:]]
            cls = int(fields[0])
        except ValueError:
            raise UserError(f"{where}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 ...'), got {line.strip()!r}"
                            ) from None
        if len(values) == 4:
            cx, cy, w, h = values
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            inside = all(0 <= v <= 1 for v in values) and w >= 0 and h >= 0
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
            inside = all(0 <= v <= 1 for v in values)
        else:
            raise UserError(f"{where}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...', got "
                            f"{len(fields)} numbers")
        if not all(np.isfinite(values)) or not inside:
            raise UserError(f"{where}: coordinates must be normalised to 0..1, got {line.strip()!r}")
        if not 0 <= cls < num_classes:
            unknown.append((number, cls))
            continue
        boxes.append(box)
        classes.append(cls)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(classes, dtype=np.int64), unknown


class YOLODetection(DetectionDataset):
    """One split of a YOLO dataset (`read_data_yaml`): records with boxes in pixels (the normalised coordinates
    times the image's size as displayed), labels 1..K in the order of `names`. A class id outside the names is an
    error naming the file and line, or, with `ignore_unknown_classes`, skipped and counted."""

    def __init__(self, data_yaml: str | os.PathLike, split: str = "train", transform: Callable | None = None, *,
                 train: bool = False, class_names: Sequence[str] | None = None,
                 ignore_unknown_classes: bool = False) -> None:
        super().__init__(transform, train)
        self.data = read_data_yaml(data_yaml)
        if split not in YOLO_SPLITS:
            raise UserError(f"YOLO split {split!r}: one of {', '.join(YOLO_SPLITS)}")
        self.class_names = list(self.data["names"])
        if class_names is not None and list(class_names) != self.class_names:
            raise UserError(f"{self.data['_file']}: its names are {', '.join(self.class_names)}, not "
                            f"{', '.join(class_names)}")
        self.paths = split_images(self.data, split)
        sanitize = BoxSanitizer(str(self.data["_file"]))
        skipped: Counter = Counter()
        self.records = []
        for image in self.paths:
            width, height = image_size(image)
            labels_file = label_path(image)
            boxes, classes = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
            if labels_file.is_file():
                boxes, classes, unknown = parse_label_file(labels_file, len(self.class_names))
                if unknown and not ignore_unknown_classes:
                    number, cls = unknown[0]
                    raise UserError(f"{labels_file}:{number}: class id {cls} is not among the {len(self.class_names)} "
                                    f"names (0..{len(self.class_names) - 1}) of {self.data['_file']}; skip such "
                                    "objects with --ignore-unknown-classes")
                skipped.update(cls for _, cls in unknown)
            boxes = boxes * np.array([width, height, width, height], dtype=np.float64)
            keep = sanitize(boxes, width, height)
            name = str(image.relative_to(self.data["path"])) if image.is_relative_to(self.data["path"]) else str(image)
            self.records.append(GroundTruth(len(self.records) + 1, name, width, height, boxes[keep],
                                            classes[keep] + 1, np.zeros(int(keep.sum()), dtype=bool)))
        sanitize.report()
        warn_skipped_classes(str(self.data["_file"]), skipped,
                             f"objects of class ids not among the {len(self.class_names)} names", id_prefix="id ")
        self.skipped_objects = dict(skipped)

    def image_path(self, index: int) -> Path:
        return self.paths[index]
