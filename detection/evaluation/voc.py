"""PASCAL VOC AP at IoU 0.5, following the official devkit.

Per class, detections are taken in decreasing score; each is compared with the ground truth of its image
of the highest IoU. IoU >= threshold with an unused box: true positive; with a `difficult` (ignored) box:
neither; otherwise (IoU too low, or the box already used): false positive. Recall counts the boxes that
are not difficult. AP is the VOC2007 11-point interpolation (`use_07_metric=True`) or, from VOC2010 on,
the area under the monotone precision envelope.

Boxes are continuous pixel coordinates (`detection.data.voc` explains the devkit's +1 convention, which
this equals); classes without any non-difficult ground truth have no AP and are left out of the mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detection.data.common import GroundTruth
from engine.errors import UserError


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a recall/precision curve (detections in decreasing score order)."""
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _iou(boxes: np.ndarray, gts: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, None, :2], gts[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], gts[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_d = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_g = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    return inter / np.maximum(area_d[:, None] + area_g[None, :] - inter, np.finfo(np.float64).eps)


def match_image(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, gt: GroundTruth,
                iou_threshold: float) -> np.ndarray:
    """Per detection of one image: 1 true positive, 0 false positive, -1 ignored (matched a difficult box)."""
    outcome = np.zeros(len(boxes), dtype=np.int8)
    if not len(boxes) or not len(gt.labels):
        return outcome
    order = np.argsort(-scores, kind="stable")
    iou = _iou(boxes[order], gt.boxes)
    iou[labels[order][:, None] != gt.labels[None, :]] = -1.0  # only boxes of the detection's class compete
    best = iou.argmax(1)
    hit = iou[np.arange(len(order)), best] >= iou_threshold
    ignored = hit & gt.ignore[best]
    candidates = np.nonzero(hit & ~ignored)[0]
    # the first (highest-scoring) detection to reach an unused box takes it; later ones are duplicates
    _, first = np.unique(best[candidates], return_index=True)
    sorted_outcome = np.zeros(len(order), dtype=np.int8)
    sorted_outcome[candidates[first]] = 1
    sorted_outcome[ignored] = -1
    outcome[order] = sorted_outcome
    return outcome


def voc_evaluate(detections: Mapping[int, Mapping[str, Any]], ground_truth: Sequence[GroundTruth],
                 class_names: Sequence[str], use_07_metric: bool = False,
                 iou_threshold: float = 0.5) -> dict[str, Any]:
    """`{"mAP", "per_class": {name: AP}, "curves": {name: (recall, precision)}}`, APs in %.

    `detections` maps image_id to `{"boxes": xyxy, "scores", "labels"}` (labels 1..K); images without an
    entry have no detections. A detection on an image not in `ground_truth` is an error.
    """
    by_id = {g.image_id: g for g in ground_truth}
    unknown = set(detections) - by_id.keys()
    if unknown:
        raise UserError(f"detections for {len(unknown)} images that are not in the ground truth "
                        f"(e.g. {sorted(unknown)[0]})")
    scores, labels, outcomes = [], [], []
    for image_id, det in detections.items():
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        s = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        lab = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
        outcomes.append(match_image(boxes, s, lab, by_id[image_id], iou_threshold))
        scores.append(s)
        labels.append(lab)
    scores_all = np.concatenate(scores) if scores else np.zeros(0)
    labels_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    outcome_all = np.concatenate(outcomes) if outcomes else np.zeros(0, dtype=np.int8)
    npos = np.zeros(len(class_names) + 1, dtype=np.int64)
    for g in ground_truth:
        np.add.at(npos, g.labels[~g.ignore], 1)

    per_class: dict[str, float | None] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for label, name in enumerate(class_names, start=1):
        if npos[label] == 0:
            per_class[name] = None
            continue
        mine = labels_all == label
        order = np.argsort(-scores_all[mine], kind="stable")
        result = outcome_all[mine][order]
        result = result[result >= 0]
        tp = np.cumsum(result == 1)
        fp = np.cumsum(result == 0)
        recall = tp / npos[label]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[name] = 100 * voc_ap(recall, precision, use_07_metric)
        curves[name] = (recall, precision)
    valid = [ap for ap in per_class.values() if ap is not None]
    return {"mAP": float(np.mean(valid)) if valid else 0.0, "per_class": per_class, "curves": curves}


def write_voc_results(out_dir: str | os.PathLike, split: str, detections: Mapping[int, Mapping[str, Any]],
                      ground_truth: Sequence[GroundTruth], class_names: Sequence[str]) -> list[Path]:
    """Devkit results files `comp4_det_<split>_<class>.txt`, lines `<image id> <score> <x1> <y1> <x2> <y2>` in
    the devkit's 1-based coordinates (image id = the part of the record name after the year)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {g.image_id: g.name.split("/")[-1] for g in ground_truth}
    lines: dict[int, list[str]] = {label: [] for label in range(1, len(class_names) + 1)}
    for image_id, det in detections.items():
        for (x1, y1, x2, y2), score, label in zip(np.asarray(det["boxes"]).reshape(-1, 4).tolist(),
                                                  np.asarray(det["scores"]).tolist(),
                                                  np.asarray(det["labels"]).tolist(), strict=True):
            lines[int(label)].append(f"{names[image_id]} {score:.6f} {x1 + 1:.2f} {y1 + 1:.2f} {x2:.2f} {y2:.2f}")
    paths = []
    for label, name in enumerate(class_names, start=1):
        path = out_dir / f"comp4_det_{split}_{name}.txt"
        path.write_text("".join(f"{line}\n" for line in lines[label]), encoding="utf-8")
        paths.append(path)
    return paths


def read_voc_results(results_dir: str | os.PathLike, split: str, ground_truth: Sequence[GroundTruth],
                     class_names: Sequence[str]) -> dict[int, dict[str, np.ndarray]]:
    """Read devkit results files back into `{image_id: {"boxes", "scores", "labels"}}` (continuous coords).

    A missing class file counts as no detections of that class; a malformed line is an error naming the
    file and line; an unknown image id is an error."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results folder not found")
    by_name: dict[str, int] = {}
    for g in ground_truth:
        by_name.setdefault(g.name.split("/")[-1], g.image_id)
    rows: dict[int, list[tuple[list[float], float, int]]] = {}
    found = 0
    for label, name in enumerate(class_names, start=1):
        path = results_dir / f"comp4_det_{split}_{name}.txt"
        if not path.is_file():
            continue
        found += 1
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                image, score, coords = parts[0], float(parts[1]), [float(v) for v in parts[2:]]
            except (IndexError, ValueError):
                coords = []
            if len(coords) != 4:
                raise UserError(f"{path}:{n}: expected '<image id> <score> <x1> <y1> <x2> <y2>', got {line!r}")
            if not all(math.isfinite(v) for v in (score, *coords)) or coords[2] < coords[0] or coords[3] < coords[1]:
                raise UserError(f"{path}:{n}: score and box must be finite numbers with x2 >= x1 and y2 >= y1, got "
                                f"{line!r}")
            if image not in by_name:
                raise UserError(f"{path}:{n}: image {image!r} is not in the {split} set")
            x1, y1, x2, y2 = coords
            rows.setdefault(by_name[image], []).append(([x1 - 1, y1 - 1, x2, y2], score, label))
    if not found:
        raise UserError(f"{results_dir}: no comp4_det_{split}_<class>.txt files")
    return {image_id: {"boxes": np.array([r[0] for r in rs]), "scores": np.array([r[1] for r in rs]),
                       "labels": np.array([r[2] for r in rs], dtype=np.int64)} for image_id, rs in rows.items()}
