"""A deterministic synthetic detection set written to disk in COCO format: the embedded default.

Three classes (ellipse, rectangle, triangle) of varied scale and aspect ratio on textured, cluttered
backgrounds; objects may overlap and partly hide each other (at most `max_occlusion` of either shape's
pixels are shared), each has a colour at least `min_contrast` (RGB distance) from the background it covers
and from every shape it touches, and some images have no objects at all. Boxes are the tight boxes of each
shape's full extent, in continuous pixel coordinates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from detection.data.coco import CocoDetection
from detection.data.crops import write_crops

SHAPE_CLASSES = ("ellipse", "rectangle", "triangle")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(40, 215, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    coarse = rng.normal(0, 18, (max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):  # clutter: lines that are not objects
        p1, p2 = rng.integers(0, [w, h], 2), rng.integers(0, [w, h], 2)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), color, int(rng.integers(1, 3)))
    return img


def _draw(rng: np.random.Generator, kind: int, h: int, w: int, min_size: int, max_size: int):
    """A shape mask of class `kind` at a random place, scale and aspect ratio, or None if it does not fit."""
    size = rng.uniform(min_size, max_size)
    ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    bw, bh = size * np.sqrt(ratio), size / np.sqrt(ratio)
    if bw >= w - 2 or bh >= h - 2:
        return None
    cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
    mask = np.zeros((h, w), np.uint8)
    if kind == 0:
        cv2.ellipse(mask, (round(cx), round(cy)), (int(bw / 2), int(bh / 2)), 0, 0, 360, 1, -1)
    elif kind == 1:
        angle = rng.uniform(-20, 20)
        pts = cv2.boxPoints(((cx, cy), (bw, bh), angle))
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:
        pts = np.array([[cx, cy - bh / 2], [cx - bw / 2, cy + bh / 2], [cx + bw / 2, cy + bh / 2]])
        pts += rng.normal(0, size * 0.05, pts.shape)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    ys, xs = np.nonzero(mask)
    if len(xs) < 16:
        return None
    return mask, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def place_objects(rng: np.random.Generator, img: np.ndarray, count: int, max_occlusion: float,
                  min_contrast: float) -> list[tuple[int, np.ndarray, list[float]]]:
    """Draw up to `count` shapes onto `img` in place; returns `(class index, mask, box)` of those drawn.

    A shape that would share more than `max_occlusion` of its own or an earlier shape's pixels is left out.
    Its colour is at least `min_contrast` away from the background under it and from every shape it
    touches, so two shapes never merge into one blob; one for which no such colour turns up is left out.
    """
    h, w = img.shape[:2]
    background = img.copy()
    placed: list[tuple[int, np.ndarray, list[float], np.ndarray]] = []
    grow = np.ones((3, 3), np.uint8)
    for _ in range(count):
        kind = int(rng.integers(0, len(SHAPE_CLASSES)))
        drawn = _draw(rng, kind, h, w, min(h, w) * 0.12, min(h, w) * 0.6)
        if drawn is None:
            continue
        mask, box = drawn
        if any((mask & m).sum() > max_occlusion * min(mask.sum(), m.sum()) for _, m, _, _ in placed):
            continue
        near = cv2.dilate(mask, grow).astype(bool)
        avoid = [background[mask.astype(bool)].mean(0)] + [c for _, m, _, c in placed if (near & m.astype(bool)).any()]
        for _ in range(50):
            color = rng.integers(0, 255, 3).astype(np.float32)
            if all(np.linalg.norm(color - other) >= min_contrast for other in avoid):
                break
        else:
            continue
        shade = rng.uniform(0.85, 1.15, (h, w, 1)).astype(np.float32)
        img[mask.astype(bool)] = (color * shade)[mask.astype(bool)]
        placed.append((kind, mask, box, color))
    return [(kind, mask, box) for kind, mask, box, _ in placed]


def make_split(out_dir: Path, split: str, num_images: int, seed: int, *, min_side: int = 160, max_side: int = 256,
               max_objects: int = 4, empty_fraction: float = 0.1, max_occlusion: float = 0.25,
               min_contrast: float = 90.0) -> Path:
    """Write `<out>/<split>/*.png` and `<out>/annotations/instances_<split>.json`; returns the json path."""
    rng = np.random.default_rng(seed)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        img = _background(rng, h, w)
        n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
        for kind, mask, box in place_objects(rng, img, n, max_occlusion, min_contrast):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kind + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()), "iscrowd": 0})
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        name = f"{image_id:06d}.png"
        cv2.imwrite(str(out_dir / split / name), cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8),
                                                              cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    ann_file = out_dir / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}),
                        encoding="utf-8")
    return ann_file


def make_shapes(out_dir: str | os.PathLike, num_train: int = 300, num_val: int = 50, seed: int = 0,
                **options) -> dict[str, Path]:
    """The train and val splits (independent random streams from `seed`)."""
    out_dir = Path(out_dir)
    return {"train": make_split(out_dir, "train", num_train, seed * 2 + 1, **options),
            "val": make_split(out_dir, "val", num_val, seed * 2 + 2, **options)}


def make_crops(shapes_dir: str | os.PathLike, out_dir: str | os.PathLike, size: int = 64, context: float = 0.15,
               backgrounds_per_image: int = 1, seed: int = 0) -> dict[str, int]:
    """An ImageNet-layout classification set cut from a shapes set (`detection.data.crops.write_crops`):
    `<out>/<split>/<class>/*.png` for its train and val splits. It is the embedded stand-in for ImageNet
    pre-training: a classifier trained on it learns the features the detector then starts from. Returns the
    number of crops per split."""
    shapes_dir, out_dir = Path(shapes_dir), Path(out_dir)
    rng = np.random.default_rng(seed)
    counts = {}
    for split in ("train", "val"):
        dataset = CocoDetection(shapes_dir / "annotations" / f"instances_{split}.json", shapes_dir / split,
                                train=True, keep_empty=True)
        written = write_crops(dataset, out_dir / split, size=size, context=context,
                              backgrounds_per_image=backgrounds_per_image, rng=rng)
        counts[split] = sum(written.values())
    return counts
