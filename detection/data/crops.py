"""Object crops of a detection dataset as an ImageNet-layout classification set: the paper's hand-off (a
classifier pre-trained, then its weights start the detector) on data of one's own, without ImageNet at hand.

Every object becomes a `size` x `size` crop of its box grown by `context` on each side (R-CNN's warped region
with context); `background` crops are squares of 15-40% of the shorter side that overlap no object by more
than `max_background_iou`. A classifier trained on `<out>/train` learns features of these objects and of what
surrounds them, which `train_det.py --weights` then starts from (`tools/make_crops.py`, docs/custom_data.md).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from detection.data.common import DetectionDataset, load_image

BACKGROUND = "background"


def crop_with_context(image: np.ndarray, box: Sequence[float], context: float, size: int) -> np.ndarray:
    """The region of `box` (xyxy pixels) grown by `context` times its width / height on each side, clipped to the
    image, resized to `size` x `size` (area interpolation)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * context, (y2 - y1) * context
    region = image[max(0, int(y1 - pad_y)):min(h, int(y2 + pad_y) + 1),
                   max(0, int(x1 - pad_x)):min(w, int(x2 + pad_x) + 1)]
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)


def background_boxes(rng: np.random.Generator, width: int, height: int, boxes: np.ndarray, count: int,
                     max_iou: float = 0.05, tries: int = 20) -> list[list[int]]:
    """Up to `count` random squares (15-40% of the shorter side) whose IoU with every box in `boxes` is below
    `max_iou`; each gets `tries` draws (an image full of objects may give none)."""
    found = []
    objects = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    for _ in range(count):
        for _ in range(tries):
            side = int(rng.uniform(0.15, 0.4) * min(height, width))
            if side < 2:
                break
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            candidate = torch.tensor([[x, y, x + side, y + side]], dtype=torch.float64)
            if not len(objects) or box_iou(candidate, objects).max() < max_iou:
                found.append([x, y, x + side, y + side])
                break
    return found


def write_crops(dataset: DetectionDataset, out_dir: str | os.PathLike, indices: Sequence[int] | None = None, *,
                size: int = 64, context: float = 0.15, backgrounds_per_image: int = 1,
                rng: np.random.Generator | None = None) -> Counter:
    """Write the crops of `dataset`'s images (`indices`, default all) to `<out_dir>/<class>/<image id>_<k>.png`
    and `<out_dir>/background/`; ignored objects (VOC difficult, COCO crowd) are left out. Returns the count per
    folder (empty folders are removed: an ImageNet-layout class folder must hold images)."""
    out_dir = Path(out_dir)
    rng = rng or np.random.default_rng(0)
    folders = [*dataset.class_names, BACKGROUND]
    for name in folders:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter({name: 0 for name in folders})
    for i in range(len(dataset)) if indices is None else indices:
        rec = dataset.records[i]
        bgr = load_image(dataset.image_path(i))[:, :, ::-1]
        stem = f"{rec.image_id:06d}"
        for k, (box, label, ignore) in enumerate(zip(rec.boxes, rec.labels, rec.ignore, strict=True)):
            if ignore:
                continue
            name = dataset.class_names[int(label) - 1]
            cv2.imwrite(str(out_dir / name / f"{stem}_{k}.png"), crop_with_context(bgr, box, context, size))
            counts[name] += 1
        for k, box in enumerate(background_boxes(rng, rec.width, rec.height, rec.boxes, backgrounds_per_image)):
            x1, y1, x2, y2 = box
            crop = cv2.resize(bgr[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out_dir / BACKGROUND / f"{stem}_{k}.png"), crop)
            counts[BACKGROUND] += 1
    for name in folders:
        if not counts[name]:
            (out_dir / name).rmdir()
    return counts


def split_images(dataset: DetectionDataset, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Image indices for the crops' training and validation sets: a random `fraction` of the images held out,
    adjusted so that each class in two images or more is on both sides (one image moved where a side lacks
    it). Held-out images are never trained on, so the classifier's error is measured on images it did not
    see."""
    order = [int(i) for i in rng.permutation(len(dataset))]
    held = set(order[: round(fraction * len(order))])
    images_of: dict[int, list[int]] = {}
    for i in order:
        for label in set(int(v) for v in dataset.records[i].labels[~dataset.records[i].ignore]):
            images_of.setdefault(label, []).append(i)
    for images in images_of.values():
        if len(images) >= 2 and not held.intersection(images):
            held.add(images[0])
        elif len(images) >= 2 and held.issuperset(images):
            held.discard(images[0])
    return [i for i in range(len(dataset)) if i not in held], sorted(held)
