"""Detections drawn on images with OpenCV: one colour per class, label and score above each box."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    hue = (label * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None,
                    class_names: Sequence[str], score_thresh: float = 0.5) -> np.ndarray:
    """A copy of RGB uint8 `image` with the boxes scoring at least `score_thresh` drawn (scores None: all)."""
    canvas = np.ascontiguousarray(image[:, :, ::-1]).copy()
    scale = max(0.35, min(canvas.shape[:2]) / 600)
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels), strict=True)):
        score = None if scores is None else float(scores[i])
        if score is not None and score < score_thresh:
            continue
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        color = class_color(int(label))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, max(1, int(2 * scale)))
        text = class_names[int(label) - 1] + ("" if score is None else f" {score:.2f}")
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        y_text = max(th + 2, y1)
        cv2.rectangle(canvas, (x1, y_text - th - 3), (x1 + tw + 2, y_text), color, -1)
        cv2.putText(canvas, text, (x1 + 1, y_text - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas[:, :, ::-1]


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 image (PNG/JPEG by extension); errors name the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
        raise OSError(f"could not write image {path}")
    return path
