"""What the detection datasets share: ground-truth records, image loading, box sanitising, collation."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import UserError
from engine.images import load_rgb


@dataclass
class GroundTruth:
    """One image's annotations as the evaluators see them: continuous xyxy pixel boxes, labels 1..K and a
    flag for objects that neither count as misses nor as false positives (VOC `difficult`, COCO crowds)."""

    image_id: int
    name: str
    width: int
    height: int
    boxes: np.ndarray  # float64 (N, 4)
    labels: np.ndarray  # int64 (N,)
    ignore: np.ndarray  # bool (N,)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 array (H, W, 3), fully decoded so truncated files fail here, naming the file."""
    return np.array(load_rgb(path))


def resolve_inside(root: Path, file_name: str, source: str) -> Path:
    """`root / file_name`, refusing absolute names and names that climb out of `root`."""
    if not isinstance(file_name, str) or not file_name or os.path.isabs(file_name):
        raise UserError(f"{source}: file_name {file_name!r} must be a relative path inside the image root")
    path = (root / file_name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UserError(f"{source}: file_name {file_name!r} points outside the image root {root}")
    return path


class BoxSanitizer:
    """Clips boxes to their image and drops those left without area, counting both for one warning."""

    def __init__(self, source: str) -> None:
        self.source, self.clipped, self.dropped = source, 0, 0

    def __call__(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Returns the mask of boxes to keep; `boxes` is clipped in place."""
        if not len(boxes):
            return np.zeros(0, dtype=bool)
        before = boxes.copy()
        np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.clipped += int((np.abs(before - boxes).sum(1) > 0)[keep].sum())
        self.dropped += int((~keep).sum())
        return keep

    def report(self) -> None:
        if self.clipped or self.dropped:
            warnings.warn(f"{self.source}: clipped {self.clipped} boxes to their image, dropped {self.dropped} "
                          "boxes with no area", stacklevel=3)


def warn_skipped_classes(source: str, skipped: Mapping[Any, int], what: str, id_prefix: str = "") -> None:
    """One warning for the objects a reader skipped because their class is not among those trained (with
    --ignore-unknown-classes): `what` says which objects ("objects of classes not among the 3 given"), then each
    unknown class with its count, `id_prefix` before numeric ids ("id 5 (2)")."""
    if skipped:
        ordered = sorted(skipped.items(), key=lambda kv: (type(kv[0]).__name__, kv[0]))  # ids numerically
        counts = ", ".join(f"{id_prefix}{c} ({n})" for c, n in ordered)
        warnings.warn(f"{source}: skipped {sum(skipped.values())} {what}: {counts}", stacklevel=3)


class DetectionDataset(torch.utils.data.Dataset):
    """Base of the detection datasets: `records` are GroundTruth entries, `image_path(i)` locates pixels.

    `train=True` leaves ignored objects (difficult / crowd) out of the targets; `transform(image, target)`
    receives the uint8 RGB array and returns the pair the model consumes.
    """

    class_names: Sequence[str]
    records: list[GroundTruth]

    def __init__(self, transform: Callable | None, train: bool) -> None:
        self.transform, self.train = transform, train

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def ground_truth(self) -> list[GroundTruth]:
        return self.records

    def without_augmentation(self) -> DetectionDataset:
        """This dataset's images with training targets (ignored objects left out) and no augmentation: what a
        validation loss is computed on. A view: records and files are shared."""
        view = copy.copy(self)
        view.train, view.transform = True, None
        return view

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        rec = self.records[index]
        image = load_image(self.image_path(index))
        if image.shape[:2] != (rec.height, rec.width):
            hint = (" (the file's EXIF orientation turns it; the annotation describes the pixels as stored, "
                    "unrotated: re-annotate it as displayed)" if image.shape[:2] == (rec.width, rec.height) else "")
            raise UserError(f"{self.image_path(index)}: image is {image.shape[1]}x{image.shape[0]} as displayed but "
                            f"its annotation says {rec.width}x{rec.height}{hint}")
        keep = ~rec.ignore if self.train else np.ones(len(rec.labels), dtype=bool)
        target = {"boxes": rec.boxes[keep].astype(np.float32), "labels": rec.labels[keep], "image_id": rec.image_id}
        if self.transform is not None:
            return self.transform(image, target)
        return to_tensors(image, target)


def to_tensors(image: np.ndarray, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """uint8 HWC array -> float CHW tensor in 0..1; numpy boxes/labels -> tensors."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    boxes = torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32)).reshape(-1, 4)
    labels = torch.as_tensor(np.asarray(target["labels"], dtype=np.int64)).reshape(-1)
    return tensor, {**target, "boxes": boxes, "labels": labels}


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images differ in size: keep lists (the model pads them into one batch)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
