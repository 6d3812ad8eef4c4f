"""Writing any dataset the tools read in another layout: COCO json, a VOC-layout folder, YOLO (ultralytics), or
LabelMe jsons, so a set can move between tools. Boxes keep their continuous pixel coordinates (as decimals: no
rounding); what a layout cannot hold is said: YOLO has no ignored objects (crowds, VOC difficult), which are
left out and counted."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import yaml

from detection.data.common import DetectionDataset

LAYOUTS = ("coco", "voc", "yolo", "labelme")


def _place_images(dataset: DetectionDataset, folder: Path, link: bool) -> list[str]:
    """Copy (or symlink) every image of `dataset` into `folder`; returns the file names used, one per record
    (the image's own name, prefixed with its index where two images share one)."""
    folder.mkdir(parents=True, exist_ok=True)
    names, seen = [], set()
    for i in range(len(dataset)):
        source = Path(dataset.image_path(i))
        name = source.name if source.name not in seen else f"{i:06d}_{source.name}"
        seen.add(name)
        target = folder / name
        if link:
            target.symlink_to(source.resolve())
        else:
            shutil.copy2(source, target)
        names.append(name)
    return names


def write_coco(dataset: DetectionDataset, root: Path, split: str, link: bool = False) -> Path:
    """`<root>/annotations/instances_<split>.json` and the images in `<root>/<split>/` (what `--dataset coco --data
    <root>` reads); ignored objects become crowds."""
    names = _place_images(dataset, root / split, link)
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(dataset.class_names, start=1)]
    images, annotations = [], []
    for rec, name in zip(dataset.records, names, strict=True):
        images.append({"id": len(images) + 1, "file_name": name, "width": rec.width, "height": rec.height})
        for box, label, ignore in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.ignore.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": int(label),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(ignore),
                                "segmentation": []})
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}),
                    encoding="utf-8")
    return path


def write_voc(dataset: DetectionDataset, root: Path, split: str, link: bool = False) -> Path:
    """`Annotations/<stem>.xml`, `JPEGImages/`, `ImageSets/Main/<split>.txt` under `root`; boxes in the devkit's
    1-based convention (xmin + 1, ymin + 1), ignored objects as `difficult`."""
    names = _place_images(dataset, root / "JPEGImages", link)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    stems = []
    for rec, name in zip(dataset.records, names, strict=True):
        objects = "".join(
            f"<object><name>{escape(dataset.class_names[int(label) - 1])}</name><difficult>{int(ignore)}</difficult>"
            f"<bndbox><xmin>{box[0] + 1!r}</xmin><ymin>{box[1] + 1!r}</ymin><xmax>{box[2]!r}</xmax>"
            f"<ymax>{box[3]!r}</ymax></bndbox></object>"
            for box, label, ignore in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.ignore.tolist(), strict=True))
        stem = Path(name).stem
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{escape(name)}</filename><size><width>{rec.width}</width><height>{rec.height}"
            f"</height><depth>3</depth></size>{objects}</annotation>", encoding="utf-8")
        stems.append(stem)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{s}\n" for s in stems), encoding="utf-8")
    return listing


def write_yolo(dataset: DetectionDataset, root: Path, split: str, link: bool = False,
               splits: Sequence[str] = ()) -> Path:
    """`images/<split>/`, `labels/<split>/<stem>.txt` (class cx cy w h, normalised) and `data.yaml` naming
    `splits` (those written so far) and the classes; ignored objects are left out (YOLO has none) and counted."""
    names = _place_images(dataset, root / "images" / split, link)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    dropped = 0
    for rec, name in zip(dataset.records, names, strict=True):
        lines = []
        for box, label, ignore in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.ignore.tolist(), strict=True):
            if ignore:
                dropped += 1
                continue
            cx, cy = (box[0] + box[2]) / 2 / rec.width, (box[1] + box[3]) / 2 / rec.height
            w, h = (box[2] - box[0]) / rec.width, (box[3] - box[1]) / rec.height
            lines.append(f"{int(label) - 1} {cx!r} {cy!r} {w!r} {h!r}\n")
        (root / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(lines), encoding="utf-8")
    if dropped:
        warnings.warn(f"{root}: YOLO labels have no ignored objects (crowd / difficult): {dropped} left out",
                      stacklevel=2)
    description = {"path": ".", **{s: f"images/{s}" for s in (*splits, split)},
                   "names": dict(enumerate(dataset.class_names))}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(description, sort_keys=False), encoding="utf-8")
    return path


def write_labelme(dataset: DetectionDataset, root: Path, split: str, link: bool = False) -> Path:
    """A LabelMe json (rectangles) beside each image in `<root>/<split>/`, and `<root>/<split>.txt` listing them;
    ignored objects get the shape flag `{"ignore": true}`, which the reader reads back."""
    folder = root / split
    names = _place_images(dataset, folder, link)
    for rec, name in zip(dataset.records, names, strict=True):
        shapes = [{"label": dataset.class_names[int(label) - 1], "points": [box[:2], box[2:]],
                   "shape_type": "rectangle", "group_id": None, "flags": {"ignore": True} if ignore else {}}
                  for box, label, ignore in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.ignore.tolist(),
                                                strict=True)]
        (folder / f"{Path(name).stem}.json").write_text(json.dumps(
            {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None,
             "imageHeight": rec.height, "imageWidth": rec.width}), encoding="utf-8")
    listing = root / f"{split}.txt"
    listing.write_text("".join(f"{split}/{Path(n).stem}\n" for n in names), encoding="utf-8")
    return listing


def write_dataset(dataset: DetectionDataset, layout: str, root: str | os.PathLike, split: str, link: bool = False,
                  written: Sequence[str] = ()) -> Path:
    """One split of `dataset` in `layout` under `root`; `written`: the splits already there (YOLO's data.yaml
    names them all)."""
    root = Path(root)
    if layout == "yolo":
        return write_yolo(dataset, root, split, link, written)
    return {"coco": write_coco, "voc": write_voc, "labelme": write_labelme}[layout](dataset, root, split, link)
