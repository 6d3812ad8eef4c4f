"""LabelMe folders: a `<stem>.json` per image (LabelMe's own format, also what several annotation tools export),
the image beside it or where the json's `imagePath` points (relative to the json).

Each shape becomes a box: a `rectangle`'s two corners in any order, a `circle`'s centre and a point on it, and the
bounding box of the points of a `polygon` (and of every other point shape); a shape flagged `ignore` or
`difficult` (LabelMe's per-shape flags) is an ignored object, as VOC's difficult ones. Classes are `--classes`
(a,b,c or a file) or the labels found, sorted; splits are list files as for VOC (`--train-split list.txt`: json
or image names, with or without extension) or, without one, every json of the folder (searched recursively).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detection.data.coco import is_finite_number, load_json
from detection.data.common import BoxSanitizer, DetectionDataset, GroundTruth, warn_skipped_classes
from detection.data.voc import read_image_list
from engine.errors import UserError
from engine.images import IMAGE_EXTENSIONS, image_size


def shape_box(shape: dict[str, Any], where: str) -> list[float]:
    """The xyxy box of one LabelMe shape."""
    points = shape.get("points")
    if not isinstance(points, list) or not points or not all(
            isinstance(p, list) and len(p) == 2 and all(is_finite_number(v) for v in p) for p in points):
        raise UserError(f"{where}: points must be a list of [x, y] pairs of numbers, got {points!r}")
    kind = shape.get("shape_type") or "polygon"
    if kind == "circle":
        if len(points) != 2:
            raise UserError(f"{where}: a circle has two points (centre, one on the circle), got {len(points)}")
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        return [cx - r, cy - r, cx + r, cy + r]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def _image_of(json_path: Path, ann: dict[str, Any]) -> Path:
    """The image a LabelMe json describes: its `imagePath` (relative to the json), else a file of the json's stem."""
    given = ann.get("imagePath")
    if isinstance(given, str) and given:
        path = (json_path.parent / given.replace("\\", "/")).resolve()
        if path.is_file():
            return path
    found = next((json_path.with_suffix(ext) for ext in IMAGE_EXTENSIONS if json_path.with_suffix(ext).is_file()),
                 None)
    if found is None:
        raise UserError(f"{json_path}: its image ({given or json_path.stem + '.*'}) is not there")
    return found


class LabelMeDetection(DetectionDataset):
    """A folder of LabelMe jsons (one split, see the module docstring): records in pixels, labels 1..K in the
    order of `class_names`. A label outside them is an error naming the file and shape, or, with
    `ignore_unknown_classes`, skipped and counted."""

    def __init__(self, root: str | os.PathLike, split: str | None = None, transform: Callable | None = None, *,
                 train: bool = False, class_names: Sequence[str] | None = None,
                 ignore_unknown_classes: bool = False) -> None:
        super().__init__(transform, train)
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: dataset folder not found")
        files = sorted(self.root.rglob("*.json"))
        if split is not None:
            listing = Path(split)
            if not listing.is_file():
                raise UserError(f"{split}: image list not found (a file of json or image names, one per line)")
            by_stem = {}
            for f in files:
                by_stem.setdefault(f.stem, f)
                by_stem.setdefault(str(f.relative_to(self.root).with_suffix("")), f)
            missing = [name for name in read_image_list(listing) if name not in by_stem]
            if missing:
                raise UserError(f"{listing}: {missing[0]!r} has no LabelMe json in {self.root} ({len(missing)} "
                                "listed names have none)")
            files = [by_stem[name] for name in read_image_list(listing)]
        if not files:
            raise UserError(f"{self.root}: no LabelMe json files")
        entries = []
        found: Counter = Counter()
        for path in files:
            ann = load_json(path, "LabelMe file")
            if not isinstance(ann, dict) or not isinstance(ann.get("shapes"), list):
                raise UserError(f"{path}: not a LabelMe file (no 'shapes' list)")
            shapes = []
            for i, shape in enumerate(ann["shapes"]):
                if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
                    raise UserError(f"{path} shape {i}: needs a 'label' and 'points'")
                flags = shape.get("flags") if isinstance(shape.get("flags"), dict) else {}
                shapes.append((shape["label"], shape_box(shape, f"{path} shape {i}"),
                               bool(flags.get("ignore") or flags.get("difficult"))))
                found[shape["label"]] += 1
            entries.append((path, ann, shapes))
        self.class_names = list(class_names) if class_names else sorted(found)
        if not self.class_names:
            raise UserError(f"{self.root}: the LabelMe files hold no shapes; give the classes with --classes a,b,c")
        label_of = {name: i + 1 for i, name in enumerate(self.class_names)}
        unknown = {n: c for n, c in found.items() if n not in label_of}
        if unknown and not ignore_unknown_classes:
            path, _, shapes = next(e for e in entries if any(shape[0] not in label_of for shape in e[2]))
            index = next(i for i, shape in enumerate(shapes) if shape[0] not in label_of)
            raise UserError(f"{path} shape {index}: label {shapes[index][0]!r} is not one of the classes "
                            f"({', '.join(self.class_names)}); give them all with --classes, or skip the others with "
                            "--ignore-unknown-classes")
        warn_skipped_classes(str(self.root), unknown,
                             f"shapes of labels not among the {len(self.class_names)} classes")
        self.skipped_objects = dict(unknown)
        sanitize = BoxSanitizer(str(self.root))
        self.records, self.paths = [], []
        for path, ann, shapes in entries:
            image = _image_of(path, ann)
            width, height = image_size(image)
            kept = [(label_of[label], box, ignore) for label, box, ignore in shapes if label in label_of]
            boxes = np.array([box for _, box, _ in kept], dtype=np.float64).reshape(-1, 4)
            labels = np.array([label for label, _, _ in kept], dtype=np.int64)
            ignored = np.array([ignore for _, _, ignore in kept], dtype=bool)
            keep = sanitize(boxes, width, height)
            self.records.append(GroundTruth(len(self.records) + 1, str(path.relative_to(self.root).with_suffix("")),
                                            width, height, boxes[keep], labels[keep], ignored[keep]))
            self.paths.append(image)
        sanitize.report()

    def image_path(self, index: int) -> Path:
        return self.paths[index]
