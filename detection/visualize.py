"""Detections drawn on images (torchvision's `draw_bounding_boxes`): one colour per class, the class name and
score above each box, line width and text size following the image size."""

from __future__ import annotations

import colorsys
import functools
import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from engine.errors import UserError


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated colour per class label, far from its neighbours' (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034 + 0.1) % 1.0, 0.8, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


@functools.cache
def _font() -> str | None:
    """A scalable TrueType font (matplotlib's DejaVu Sans, installed with it); None: Pillow's small default."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    except (ImportError, ValueError):
        return None


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None,
                    class_names: Sequence[str], score_thresh: float = 0.5) -> np.ndarray:
    """A copy of RGB uint8 `image` (H, W, 3) with the boxes scoring at least `score_thresh` drawn (scores None:
    all, without scores in the text)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    keep = np.ones(len(boxes), dtype=bool) if scores is None else np.asarray(scores).reshape(-1) >= score_thresh
    kept_scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)[keep]
    texts = [class_names[int(label) - 1] + ("" if kept_scores is None else f" {kept_scores[i]:.2f}")
             for i, label in enumerate(labels[keep])]
    return draw_boxes(image, boxes[keep], texts, [class_color(int(label)) for label in labels[keep]])


def draw_boxes(image: np.ndarray, boxes: np.ndarray, texts: Sequence[str],
               colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """A copy of RGB uint8 `image` with `boxes` (xyxy) drawn in `colors`, each with its text on a filled label;
    line width and text size follow the image size."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not len(boxes):
        return np.array(image, copy=True)
    side = min(image.shape[:2])
    font = _font()
    filled = {}
    if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters:  # torchvision >= 0.21: text on a box
        filled = {"fill_labels": True, "label_background_colors": list(colors),
                  "label_colors": ["black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
                                   for r, g, b in colors]}
    canvas = draw_bounding_boxes(torch.tensor(np.asarray(image, dtype=np.uint8)).permute(2, 0, 1),
                                 torch.from_numpy(boxes), labels=list(texts), colors=list(colors),
                                 width=max(1, round(side / 250)), font=font,
                                 font_size=max(10, round(side / 40)) if font else None, **filled)
    return canvas.permute(1, 2, 0).numpy()


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 image in the format its extension names (JPEG at quality 95); errors name the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(np.ascontiguousarray(image))
    if path.suffix.lower() == ".pgm":  # a grey-level format
        picture = picture.convert("L")
    try:
        picture.save(path, quality=95)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: could not write the image ({exc})") from None
    return path
