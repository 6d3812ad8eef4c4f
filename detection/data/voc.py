"""PASCAL VOC-format data: the VOCdevkit named sets, or any folder of VOC XML with its own classes.

Coordinates follow the devkit: VOC stores 1-based inclusive pixel indices; a box (xmin, ymin, xmax, ymax)
covers the continuous area [xmin - 1, xmax] x [ymin - 1, ymax], which is what the model sees. The VOC
evaluator's continuous IoU on these boxes equals the devkit's "+1" IoU on the original numbers, and
`detection.evaluation.voc` converts back when it writes devkit result files. XML is parsed with defusedxml.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException

from detection.data.common import BoxSanitizer, DetectionDataset, GroundTruth, warn_skipped_classes
from engine.errors import UserError
from engine.images import IMAGE_EXTENSIONS, image_size

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

VOC_SETS = ("voc07", "voc12", "voc0712", "voc07++12")
CUSTOM_VOC = "voc"  # a VOC-layout folder of one's own, with its own classes
# sub-folder names: the devkit's, and the lower-case ones that labelling tools (LabelImg, CVAT exports) write
ANNOTATION_DIRS, IMAGE_DIRS = ("Annotations", "annotations"), ("JPEGImages", "images")


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


@dataclass(frozen=True)
class VOCObject:
    name: str
    box: list[float]  # xmin, ymin, xmax, ymax as written (1-based, inclusive)
    difficult: bool


@dataclass(frozen=True)
class VOCAnnotation:
    width: int
    height: int
    filename: str  # <filename>, "" when absent
    objects: list[VOCObject]


def _number(node, tag: str, source: str) -> float:
    child = node.find(tag)
    try:
        return float(child.text)
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{source}: missing or non-numeric <{tag}>") from None


def parse_voc_xml(path: Path) -> VOCAnnotation:
    """One annotation file; a missing, unsafe or malformed file or field is a `UserError` naming it."""
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
        box = obj.find("bndbox")
        if box is None:
            raise UserError(f"{where}: missing <bndbox>")
        coords = [_number(box, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(VOCObject((obj.findtext("name") or "").strip(), coords, difficult))
    return VOCAnnotation(width, height, (root.findtext("filename") or "").strip(), objects)


def read_image_list(path: Path) -> list[str]:
    """Image ids of a list file: one per line (the devkit's `ImageSets/Main/<split>.txt`); file extensions (image,
    `.xml`, `.json`) and repeated ids (a CSV column of file names) are dropped."""
    ids: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").split():
        stem, ext = os.path.splitext(line)
        ids[stem if ext.lower() in (*IMAGE_EXTENSIONS, ".xml", ".json") else line] = None
    return list(ids)


def _subfolder(base: Path, names: Sequence[str]) -> Path:
    return next((base / n for n in names if (base / n).is_dir()), base / names[0])


@dataclass(frozen=True)
class VOCSource:
    """One image list of a VOC-layout folder: `base` holds the annotations and images; `prefix` starts the
    record names (`2007/` in the devkit sets)."""

    base: Path
    listing: Path
    prefix: str = ""


def voc_sources(root: Path, name: str, split: str) -> list[VOCSource]:
    """The image lists of a named set in a VOCdevkit, or of a VOC-layout folder (`name == "voc"`), where
    `split` is a list in `ImageSets/Main/` or the path of a list file."""
    if name == CUSTOM_VOC:
        listing = Path(split) if Path(split).is_file() else root / "ImageSets" / "Main" / f"{split}.txt"
        return [VOCSource(root, listing)]
    return [VOCSource(root / f"VOC{year}", root / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt",
                      f"{year}/") for year, image_set in voc_image_sets(name, split)]


def _image_file(images: Path, image_id: str, filename: str) -> Path:
    """`<id>.jpg` as in the devkit; otherwise the XML's <filename>, or `<id>` with another image extension."""
    path = images / f"{image_id}.jpg"
    if path.is_file():
        return path
    if filename and Path(filename).name == filename and (images / filename).is_file():
        return images / filename
    return next((images / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS if (images / f"{image_id}{ext}").is_file()),
                path)


class VOCDetection(DetectionDataset):
    """A named VOC set (`voc07`, `voc12`, `voc0712`, `voc07++12`) and split from a VOCdevkit folder, or a
    VOC-layout folder of one's own (`name="voc"`) with `class_names`.

    A folder of one's own holds `Annotations/` (or `annotations/`), `JPEGImages/` (or `images/`) and
    `ImageSets/Main/<split>.txt`; `split` may also be the path of a list file. Without `class_names` the
    classes are those its annotations use, sorted. An object of another class is an error naming the file and
    the classes found, or, with `ignore_unknown_classes`, skipped and counted.

    Record names are `<year>/<image id>` for the devkit sets (image ids alone in devkit result files), the
    image id otherwise; `difficult` objects are ignored objects: out of the training targets by default, kept
    for evaluation. `annotated=False` reads no XML (VOC2012 test has none public): records without objects,
    sizes from the image headers, for writing results files to submit.
    """

    def __init__(self, root: str | os.PathLike, name: str = "voc07", split: str = "trainval",
                 transform: Callable | None = None, *, train: bool = False, keep_difficult: bool = False,
                 annotated: bool = True, class_names: Sequence[str] | None = None,
                 ignore_unknown_classes: bool = False) -> None:
        super().__init__(transform, train and not keep_difficult)
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: {'VOCdevkit' if name != CUSTOM_VOC else 'dataset'} folder not found")
        sources = voc_sources(self.root, name, split)
        self.image_sets = [(s.prefix.rstrip("/") or s.base.name, Path(split).stem if name == CUSTOM_VOC else
                            s.listing.stem) for s in sources]
        entries = []  # (source, image id, image path, annotation file, its contents or None)
        for source in sources:
            if not source.listing.is_file():
                hint = (f"a list file or a name in {self.root}/ImageSets/Main/" if name == CUSTOM_VOC else
                        f"is {self.root} a VOCdevkit folder?")
                raise UserError(f"{source.listing}: image set not found ({hint})")
            annotations, images = _subfolder(source.base, ANNOTATION_DIRS), _subfolder(source.base, IMAGE_DIRS)
            for image_id in read_image_list(source.listing):
                xml = annotations / f"{image_id}.xml"
                ann = parse_voc_xml(xml) if annotated else None
                entries.append((source, image_id, _image_file(images, image_id, ann.filename if ann else ""), xml, ann))
        if not entries:
            raise UserError(f"{self.root}: {name} {split} lists no images")
        found = Counter(o.name for *_, ann in entries if ann for o in ann.objects)
        if class_names is None:
            class_names = VOC_CLASSES if name != CUSTOM_VOC else sorted(found)
            if not class_names:
                raise UserError(f"{self.root}: the {split} annotations hold no objects; give the classes with "
                                "--classes a,b,c")
        self.class_names = list(class_names)
        label_of = {n: i + 1 for i, n in enumerate(self.class_names)}
        unknown = {n: c for n, c in found.items() if n not in label_of}
        if unknown and not ignore_unknown_classes:
            first = next(xml for *_, xml, a in entries if a and any(o.name in unknown for o in a.objects))
            listed = ", ".join(f"{n!r} ({c})" for n, c in sorted(found.items()))
            raise UserError(f"{first}: object of class {next(iter(sorted(unknown)))!r}, which is not one of the "
                            f"classes ({', '.join(self.class_names)}); the annotations hold {listed}. Give them all "
                            "with --classes, or skip the others with --ignore-unknown-classes")
        warn_skipped_classes(str(self.root), unknown,
                             f"objects of classes not among the {len(self.class_names)} given")
        self.skipped_objects = dict(unknown)
        self.records, self.paths = [], []
        sanitize = BoxSanitizer(str(self.root))
        for source, image_id, image_path, _, ann in entries:
            if ann is None:
                (width, height), objects = image_size(image_path), []
            else:
                width, height, objects = ann.width, ann.height, [o for o in ann.objects if o.name in label_of]
            boxes = np.array([o.box for o in objects], dtype=np.float64).reshape(-1, 4)
            boxes[:, :2] -= 1  # 1-based inclusive -> continuous
            keep = sanitize(boxes, width, height)
            labels = np.array([label_of[o.name] for o in objects], dtype=np.int64)
            difficult = np.array([o.difficult for o in objects], dtype=bool)
            self.records.append(GroundTruth(len(self.records), f"{source.prefix}{image_id}", width, height,
                                            boxes[keep], labels[keep], difficult[keep]))
            self.paths.append(image_path)
        sanitize.report()

    def image_path(self, index: int) -> Path:
        return self.paths[index]
