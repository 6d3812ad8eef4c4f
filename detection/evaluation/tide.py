"""TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020): why a
detector loses AP, as the AP@0.5 each error type would give back if it alone were fixed.

The definitions and thresholds are the authors' (their package `tidecv`, which the tests run beside this one):
each image's detections, best first (at most `max_dets`), are matched greedily to the unmatched ground truth of
their class with the highest IoU >= `pos_thresh` (0.5). A detection left unmatched is a

- **Loc** error when its IoU with a box of its class is in [`bg_thresh`, `pos_thresh`] (0.1, 0.5): found, boxed badly;
- **Cls** when a box of another class overlaps it by >= `pos_thresh`: boxed well, named wrongly;
- **Dupe** when a box of its class it overlaps by >= `pos_thresh` was already taken: a second detection;
- **Bkg** when it overlaps no box by more than `bg_thresh`: a false alarm on background;
- **Both** otherwise (wrong class and a loose box);

and a box that no detection took, and that no Loc or Cls error points at, is a **Miss**. Fixing a Cls or Loc
error turns the best-scoring such detection of a box into a true positive (others become nothing); fixing a
Dupe, Bkg or Both error removes the detection; fixing a Miss removes the box. `FalsePos` is the AP with every
false positive scored below every true one, `FalseNeg` the AP with every missed box removed. AP is TIDE's own
(101-point interpolated, COCO's), averaged over the classes that have boxes or detections. Ignored objects
(crowds, VOC difficult) are regions: a detection of their class covering one by more than `pos_thresh`
(intersection over the detection's area) counts neither way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detection.data.common import GroundTruth

MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_ERRORS = ("FalsePos", "FalseNeg")
_RECALLS = np.arange(101) / 100  # TIDE's (and COCO's) 101 recall points


def box_iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """IoU of xyxy boxes (N, 4) x (M, 4) as pycocotools computes it for boxes; `crowd`: intersection over the
    area of `a`'s box (an ignore region covering a detection)."""
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    union = area_a[:, None] if crowd else area_a[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass
class Error:
    """One error: its type, the image, the detection's index among the image's kept detections (a Miss: the box's
    index), the class and score, the box it points at (`gt_index`; -1 none, -2 one already taken), and what the AP
    data holds for it before and after fixing, (class, score, is_true) or None."""

    kind: str
    image_id: int
    index: int
    original: tuple[int, float, bool] | None
    label: int
    score: float = 0.0
    gt_index: int = -1
    fix_label: int = 0  # the class a fixed Cls / Loc error counts for: the box's / the detection's
    fixed: tuple[int, float, bool] | None = None


class _Points:
    """AP data: (class, score, is_true) points in the order they were added, and box counts per class."""

    def __init__(self) -> None:
        self.classes: dict[int, None] = {}  # creation order, as TIDE's defaultdict
        self.cls: list[int] = []
        self.score: list[float] = []
        self.true: list[bool] = []
        self.num_gt: dict[int, int] = {}

    def push(self, cls: int, score: float, true: bool) -> None:
        self.classes.setdefault(cls)
        self.num_gt.setdefault(cls, 0)
        self.cls.append(cls)
        self.score.append(score)
        self.true.append(true)

    def add_gt(self, cls: int, count: int) -> None:
        self.classes.setdefault(cls)
        self.num_gt[cls] = self.num_gt.get(cls, 0) + count

    def class_aps(self) -> dict[int, float]:
        """TIDE's AP (in %) of each class that has boxes or detections."""
        cls, score = np.asarray(self.cls, np.int64), np.asarray(self.score, np.float64)
        true = np.asarray(self.true, dtype=bool)
        out = {}
        for c in self.classes:
            mask = cls == c
            if not mask.any() and not self.num_gt[c]:
                continue
            out[c] = _ap(score[mask], true[mask], self.num_gt[c])
        return out


def _ap(scores: np.ndarray, trues: np.ndarray, num_gt: int) -> float:
    if num_gt == 0:
        return 0.0
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    true = trues[order]
    tp = np.cumsum(true)
    precision = tp / np.arange(1, len(true) + 1)
    recall = tp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, _RECALLS, side="left")
    values = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0)
    return sum(values.tolist()) / len(values) * 100


class TideRun:
    """The matching and error classification of one set of detections against the ground truth."""

    def __init__(self, detections: Mapping[int, Mapping[str, Any]], records: Sequence[GroundTruth],
                 pos_thresh: float = 0.5, bg_thresh: float = 0.1, max_dets: int = 100) -> None:
        self.pos, self.bg, self.max_dets = pos_thresh, bg_thresh, max_dets
        self.points = _Points()
        self.errors: list[Error] = []
        self.false_negatives: dict[int, int] = {}
        self.matched: dict[int, np.ndarray] = {}  # image id -> per kept detection: matched box index or -1
        self.kept: dict[int, np.ndarray] = {}  # image id -> indices into the image's detections, best first
        for rec in records:
            self._image(rec, detections.get(rec.image_id))
        self._resolve_best_matches()

    def _image(self, rec: GroundTruth, det: Mapping[str, Any] | None) -> None:
        real = ~rec.ignore
        gt_boxes, gt_cls = rec.boxes[real], rec.labels[real].astype(np.int64)
        regions, region_cls = rec.boxes[rec.ignore], rec.labels[rec.ignore].astype(np.int64)
        for c in gt_cls.tolist():
            self.points.add_gt(c, 1)
        count = 0 if det is None else len(det["scores"])
        if count == 0:
            for j, c in enumerate(gt_cls.tolist()):
                self._miss(rec.image_id, j, c)
            return
        scores = np.asarray(det["scores"], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[: self.max_dets]
        self.kept[rec.image_id] = order
        boxes = np.asarray(det["boxes"], dtype=np.float64)[order]
        labels, scores = np.asarray(det["labels"]).astype(np.int64)[order], scores[order]
        iou = box_iou(boxes, gt_boxes)
        same = labels[:, None] == gt_cls[None, :]
        cls_iou = iou * same
        gt_used = np.zeros(len(gt_cls), dtype=bool)
        matched = np.full(len(labels), -1)
        buffer = cls_iou.copy()
        for i in range(len(labels)):
            if len(gt_cls):
                j = int(buffer[i].argmax())
                if buffer[i, j] >= self.pos:
                    matched[i], gt_used[j] = j, True
                    buffer[:, j] = 0
        ignored = np.zeros(len(labels), dtype=bool)
        if len(regions):
            covered = box_iou(boxes, regions, crowd=True)
            for r in range(len(regions)):
                hit = (matched < 0) & ~ignored & (covered[:, r] > self.pos) & (labels == region_cls[r])
                ignored |= hit
        self.matched[rec.image_id] = matched
        used_cls = iou * gt_used[None, :] * same
        other_cls = iou * ~same
        for i in range(len(labels)):
            c, s = int(labels[i]), float(scores[i])
            if matched[i] >= 0:
                self.points.push(c, s, True)
                continue
            original = None if ignored[i] else (c, s, False)
            if original is not None:
                self.points.push(c, s, False)
            error = Error("Both", rec.image_id, i, original, c, s)
            if not len(gt_cls):
                error.kind = "Bkg"
            elif self.bg <= cls_iou[i].max() <= self.pos:
                error.kind, error.gt_index, error.fix_label = "Loc", int(cls_iou[i].argmax()), c
            elif other_cls[i].max() >= self.pos:
                error.kind, error.gt_index = "Cls", int(other_cls[i].argmax())
                error.fix_label = int(gt_cls[error.gt_index])
            elif used_cls[i].max() >= self.pos:
                error.kind = "Dupe"
            elif iou[i].max() <= self.bg:
                error.kind = "Bkg"
            if error.kind in ("Cls", "Loc") and gt_used[error.gt_index]:
                error.gt_index = -2  # its box was taken: fixing it only removes the detection
            self.errors.append(error)
        usable = {e.gt_index for e in self.errors[len(self.errors) - int((matched < 0).sum()):]
                  if e.kind in ("Cls", "Loc") and e.gt_index >= 0}
        for j, c in enumerate(gt_cls.tolist()):
            if not gt_used[j]:
                self.false_negatives[c] = self.false_negatives.get(c, 0) + 1
                if j not in usable:
                    self.errors.append(Error("Miss", rec.image_id, j, None, c, gt_index=j))

    def _miss(self, image_id: int, index: int, cls: int) -> None:
        self.false_negatives[cls] = self.false_negatives.get(cls, 0) + 1
        self.errors.append(Error("Miss", image_id, index, None, cls, gt_index=index))

    def _resolve_best_matches(self) -> None:
        """A box that several Cls / Loc errors point at is given back once, to the best-scoring (the first on a
        tie); the fixed class is the box's for Cls, the detection's for Loc."""
        best: dict[tuple[int, int], Error] = {}
        for e in self.errors:
            if e.kind in ("Cls", "Loc") and e.gt_index >= 0:
                key = (e.image_id, e.gt_index)
                if key not in best or best[key].score < e.score:
                    best[key] = e
        for e in best.values():
            e.fixed = (e.fix_label, e.score, True)

    def fix(self, kinds: Sequence[str] = (), *, perfect_scores: bool = False, no_misses: bool = False) -> _Points:
        """The AP data after fixing every error of `kinds` (TIDE's `fix_errors`): errors first, in the order they
        were found, then the true positives; `perfect_scores` rescores true positives 1 and the rest 0
        (FalsePos), `no_misses` removes every unmatched box (FalseNeg)."""
        out = _Points()
        num_gt = dict(self.points.num_gt)
        for e in self.errors:
            point = e.original
            if e.kind in kinds:
                point = e.fixed
                if e.kind == "Miss":
                    num_gt[e.label] -= 1
            if point is not None:
                out.push(point[0], float(point[2]) if perfect_scores else point[1], point[2])
        cls = np.asarray(self.points.cls, dtype=np.int64)
        score = np.asarray(self.points.score, dtype=np.float64)
        true = np.asarray(self.points.true, dtype=bool)
        for c in num_gt:
            for s in score[(cls == c) & true].tolist():
                out.push(c, 1.0 if perfect_scores else s, True)
        for c, n in num_gt.items():
            out.add_gt(c, n - (self.false_negatives.get(c, 0) if no_misses else 0))
        return out


def tide(detections: Mapping[int, Mapping[str, Any]], records: Sequence[GroundTruth], class_names: Sequence[str],
         pos_thresh: float = 0.5, bg_thresh: float = 0.1, max_dets: int = 100) -> dict[str, Any]:
    """`{"AP", "main": {Cls, Loc, Both, Dupe, Bkg, Miss}, "special": {FalsePos, FalseNeg}, "counts": {...},
    "per_class": {name: {"AP", "main", "special"}}}`: TIDE's AP@`pos_thresh` and the AP points each error type
    gives back (main errors fixed one type at a time, negative gains clamped at 0 as TIDE does), in %; `counts`
    is how many errors of each type there are. Images of `detections` absent from `records` are not read."""
    return summarize(TideRun(detections, records, pos_thresh, bg_thresh, max_dets), class_names)


def summarize(run: TideRun, class_names: Sequence[str]) -> dict[str, Any]:
    """What `tide` returns, from a run already made."""
    base_classes = run.points.class_aps()
    base = _mean(base_classes)
    fixed = {kind: run.fix((kind,)).class_aps() for kind in MAIN_ERRORS}
    special = {"FalsePos": run.fix(perfect_scores=True).class_aps(), "FalseNeg": run.fix(no_misses=True).class_aps()}
    per_class = {}
    for c, ap in base_classes.items():
        name = class_names[c - 1] if 1 <= c <= len(class_names) else str(c)
        per_class[name] = {"AP": ap, "main": {k: max(aps.get(c, 0.0) - ap, 0.0) for k, aps in fixed.items()},
                           "special": {k: aps.get(c, 0.0) - ap for k, aps in special.items()}}
    counts = {kind: sum(e.kind == kind for e in run.errors) for kind in MAIN_ERRORS}
    return {"AP": base, "main": {k: max(_mean(aps) - base, 0.0) for k, aps in fixed.items()},
            "special": {k: _mean(aps) - base for k, aps in special.items()}, "counts": counts, "per_class": per_class}


def _mean(aps: Mapping[int, float]) -> float:
    """TIDE's mAP: the plain mean over the classes, in their order."""
    values = list(aps.values())
    return sum(values) / len(values) if values else 0.0
