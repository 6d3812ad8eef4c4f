"""PASCAL VOC in the VOCdevkit layout, annotations parsed with defusedxml.

Coordinates follow the devkit: VOC stores 1-based inclusive pixel indices; a box (xmin, ymin, xmax, ymax)
covers the continuous area [xmin - 1, xmax] x [ymin - 1, ymax], which is what the model sees. The VOC
evaluator's continuous IoU on these boxes equals the devkit's "+1" IoU on the original numbers, and
`detection.evaluation.voc` converts back when it writes devkit result files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException

from detection.data.common import BoxSanitizer, DetectionDataset, GroundTruth
from engine.errors import UserError
from engine.images import image_size

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

VOC_SETS = ("voc07", "voc12", "voc0712", "voc07++12")


def voc_image_sets(name: str, split: str) -> list[tuple[str, str]]:
    """(year, image set) pairs of a named set: `voc0712` trainval is the paper's "07+12" (07 trainval +
    12 trainval, tested on 07 test); `voc07++12` trainval is 07 trainval + 07 test + 12 trainval (tested on
    12 test)."""
    if name == "voc07":
        return [("2007", split)]
    if name == "voc12":
        return [("2012", split)]
    if name == "voc0712":
        return [("2007", "trainval"), ("2012", "trainval")] if split == "trainval" else [("2007", split)]
    if name == "voc07++12":
        if split == "trainval":
            return [("2007", "trainval"), ("2007", "test"), ("2012", "trainval")]
        return [("2012", split)]
    raise UserError(f"unknown VOC set {name!r}; valid: {', '.join(VOC_SETS)}")


def _number(node, tag: str, source: str) -> float:
    child = node.find(tag)
    try:
        return float(child.text)
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{source}: missing or non-numeric <{tag}>") from None


def parse_voc_xml(path: Path) -> tuple[int, int, list[tuple[str, list[float], bool]]]:
    """(width, height, [(class name, [xmin, ymin, xmax, ymax] as written, difficult)]) of one annotation."""
    try:
        root = SafeET.parse(path).getroot()
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found") from None
    except DefusedXmlException as exc:
        raise UserError(f"{path}: refused unsafe XML ({type(exc).__name__})") from None
    except ParseError as exc:
        raise UserError(f"{path}: malformed XML ({exc})") from None
    size = root.find("size")
    if size is None:
        raise UserError(f"{path}: missing <size>")
    width, height = int(_number(size, "width", str(path))), int(_number(size, "height", str(path)))
    objects = []
    for i, obj in enumerate(root.findall("object")):
        where = f"{path} object {i}"
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise UserError(f"{where}: unknown class {name!r}")
        box = obj.find("bndbox")
        if box is None:
            raise UserError(f"{where}: missing <bndbox>")
        coords = [_number(box, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append((name, coords, difficult))
    return width, height, objects


class VOCDetection(DetectionDataset):
    """A named VOC set (`voc07`, `voc12`, `voc0712`, `voc07++12`) and split from a VOCdevkit folder.

    Record names are `<year>/<image id>` (image ids alone in devkit result files); `difficult` objects are
    ignored objects: out of the training targets by default, kept for evaluation. `annotated=False` reads
    no XML (VOC2012 test has none public): records without objects, sizes from the image headers, for
    writing results files to submit.
    """

    class_names = VOC_CLASSES

    def __init__(self, root: str | os.PathLike, name: str = "voc07", split: str = "trainval",
                 transform: Callable | None = None, *, train: bool = False, keep_difficult: bool = False,
                 annotated: bool = True) -> None:
        super().__init__(transform, train and not keep_difficult)
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: VOCdevkit folder not found")
        self.image_sets = voc_image_sets(name, split)
        self.records, self.paths = [], []
        label_of = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
        for year, image_set in self.image_sets:
            base = self.root / f"VOC{year}"
            listing = base / "ImageSets" / "Main" / f"{image_set}.txt"
            if not listing.is_file():
                raise UserError(f"{listing}: image set not found (is {self.root} a VOCdevkit folder?)")
            sanitize = BoxSanitizer(str(base / "Annotations"))
            for image_name in listing.read_text(encoding="utf-8").split():
                image_path = base / "JPEGImages" / f"{image_name}.jpg"
                if annotated:
                    width, height, objects = parse_voc_xml(base / "Annotations" / f"{image_name}.xml")
                else:
                    (width, height), objects = image_size(image_path), []
                boxes = np.array([o[1] for o in objects], dtype=np.float64).reshape(-1, 4)
                boxes[:, :2] -= 1  # 1-based inclusive -> continuous
                keep = sanitize(boxes, width, height)
                labels = np.array([label_of[o[0]] for o in objects], dtype=np.int64)
                difficult = np.array([o[2] for o in objects], dtype=bool)
                self.records.append(GroundTruth(len(self.records), f"{year}/{image_name}", width, height,
                                                boxes[keep], labels[keep], difficult[keep]))
                self.paths.append(image_path)
            sanitize.report()
        if not self.records:
            raise UserError(f"{self.root}: {name} {split} lists no images")

    def image_path(self, index: int) -> Path:
        return self.paths[index]
