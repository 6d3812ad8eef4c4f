"""Why a detector errs, and which score threshold to deploy with: TIDE's error breakdown (`tide.py`), a confusion
matrix, the per-class threshold of best F1, and the worst cases drawn. `analyze(...)` writes them all
(`eval_det.py --analyze`, `test.analyze: true` at the end of training)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detection.data.common import GroundTruth
from detection.data.common import load_image as read_image
from detection.evaluation.tide import MAIN_ERRORS, SPECIAL_ERRORS, TideRun, box_iou, summarize
from detection.visualize import draw_boxes, save_image
from engine.errors import UserError
from engine.metrics import pyplot, save_figure

Detections = Mapping[int, Mapping[str, Any]]


def confusion_matrix(detections: Detections, records: Sequence[GroundTruth], num_classes: int,
                     iou_thresh: float = 0.5, conf_thresh: float = 0.5) -> np.ndarray:
    """(K+1) x (K+1) counts, rows the true class 1..K then background, columns the predicted class then
    background. Per image, the detections scoring at least `conf_thresh`, best first, each take the unmatched box
    of highest IoU >= `iou_thresh` whatever its class: (true, predicted); one that takes none is (background,
    predicted); a box no detection took is (true, background). Ignored objects (crowds, VOC difficult) are no
    row, and a detection that takes no box but covers one of them by `iou_thresh` is left out."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    background = num_classes
    for rec in records:
        det = detections.get(rec.image_id, {})
        scores = np.asarray(det.get("scores", ()), dtype=np.float64).reshape(-1)
        keep = np.flatnonzero(scores >= conf_thresh)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        boxes = np.asarray(det.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)[keep]
        labels = np.asarray(det.get("labels", ()), dtype=np.int64).reshape(-1)[keep]
        real = ~rec.ignore
        gt_boxes, gt_labels = rec.boxes[real], rec.labels[real].astype(np.int64)
        iou = box_iou(boxes, gt_boxes)
        covers_ignored = (box_iou(boxes, rec.boxes[rec.ignore]) >= iou_thresh).any(axis=1)
        taken = np.zeros(len(gt_labels), dtype=bool)
        for i, label in enumerate(labels):
            candidates = np.where(taken, -1.0, iou[i]) if len(gt_labels) else np.zeros(0)
            j = int(candidates.argmax()) if len(candidates) else -1
            if j >= 0 and candidates[j] >= iou_thresh:
                taken[j] = True
                matrix[gt_labels[j] - 1, label - 1] += 1
            elif not covers_ignored[i]:
                matrix[background, label - 1] += 1
        for label in gt_labels[~taken]:
            matrix[label - 1, background] += 1
    return matrix


def match_by_class(detections: Detections, records: Sequence[GroundTruth], num_classes: int,
                   iou_thresh: float = 0.5) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """COCO's matching at one IoU: per image and class, detections best first each take the unmatched box of their
    class with the highest IoU >= `iou_thresh`; one that takes none but covers an ignored box of its class by
    that much counts neither way. Returns `{class: (scores, is_true)}` of the detections that count, and the
    number of (not ignored) boxes per class (index 0 unused)."""
    found: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {c: ([], []) for c in range(1, num_classes + 1)}
    num_gt = np.zeros(num_classes + 1, dtype=np.int64)
    for rec in records:
        np.add.at(num_gt, rec.labels[~rec.ignore].astype(np.int64), 1)
        det = detections.get(rec.image_id)
        if det is None or not len(det["scores"]):
            continue
        scores = np.asarray(det["scores"], dtype=np.float64)
        labels = np.asarray(det["labels"], dtype=np.int64)
        overlap = box_iou(np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4), rec.boxes)  # one per image
        for c in np.unique(labels).tolist():
            if not 1 <= c <= num_classes:
                continue
            mine = np.flatnonzero(labels == c)
            mine = mine[np.argsort(-scores[mine], kind="stable")]
            own = (rec.labels == c) & ~rec.ignore
            iou = overlap[np.ix_(mine, np.flatnonzero(own))]
            ignored = (overlap[np.ix_(mine, np.flatnonzero((rec.labels == c) & rec.ignore))] >= iou_thresh).any(axis=1)
            taken = np.zeros(int(own.sum()), dtype=bool)
            true = np.zeros(len(mine), dtype=bool)
            counts = np.ones(len(mine), dtype=bool)
            for i in range(len(mine)):
                if len(taken):
                    candidates = np.where(taken, -1.0, iou[i])
                    j = int(candidates.argmax())
                    if candidates[j] >= iou_thresh:
                        taken[j] = true[i] = True
                        continue
                counts[i] = not ignored[i]
            found[c][0].append(scores[mine][counts])
            found[c][1].append(true[counts])
    return {c: (np.concatenate(s) if s else np.zeros(0), np.concatenate(t) if t else np.zeros(0, dtype=bool))
            for c, (s, t) in found.items()}, num_gt


def threshold_curve(scores: np.ndarray, true: np.ndarray, num_gt: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of keeping the detections that score at least each distinct score (best first)."""
    order = np.argsort(-scores, kind="stable")
    scores, true = scores[order], true[order]
    tp = np.cumsum(true)
    kept = np.arange(1, len(scores) + 1)
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # the end of each run of equal scores
    precision = tp[last] / kept[last]
    recall = tp[last] / num_gt if num_gt else np.zeros(len(last))
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"threshold": scores[last], "precision": precision, "recall": recall, "f1": f1}


def best_f1_thresholds(detections: Detections, records: Sequence[GroundTruth], class_names: Sequence[str],
                       iou_thresh: float = 0.5) -> tuple[dict[str, dict[str, float] | None], dict[str, dict]]:
    """Per class the score threshold of best F1 (detections scoring at least it are kept; the highest such
    threshold on a tie) with its precision, recall and F1 (in 0..1), None for a class without boxes or without
    detections; and the curves behind them."""
    matched, num_gt = match_by_class(detections, records, len(class_names), iou_thresh)
    best: dict[str, dict[str, float] | None] = {}
    curves = {}
    for c, name in enumerate(class_names, start=1):
        scores, true = matched[c]
        if not num_gt[c] or not len(scores):
            best[name] = None
            continue
        curve = threshold_curve(scores, true, int(num_gt[c]))
        i = int(np.argmax(curve["f1"]))
        best[name] = {k: float(v[i]) for k, v in curve.items()}
        curves[name] = curve
    return best, curves


# ----- pictures --------------------------------------------------------------------------------------------------
def plot_tide(result: Mapping[str, Any], out_png: str | os.PathLike) -> Path:
    """Bars: the AP each main and special error type gives back."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 1.2]})
    colors = ["#d62728", "#ff7f0e", "#8c564b", "#9467bd", "#1f77b4", "#7f7f7f"]
    main = [result["main"][k] for k in MAIN_ERRORS]
    left.bar(MAIN_ERRORS, main, color=colors)
    for x, v in enumerate(main):
        left.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    left.set_ylabel("AP@0.5 gained if fixed")
    left.set_title(f"TIDE main errors (AP50 {result['AP']:.1f})", fontsize=10)
    special = [result["special"][k] for k in SPECIAL_ERRORS]
    right.bar(["false pos.", "false neg."], special, color=["#2ca02c", "#e377c2"])
    for x, v in enumerate(special):
        right.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    right.set_title("special", fontsize=10)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_png)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], out_png: str | os.PathLike,
                   normalize: bool = False) -> Path:
    """The matrix as a heatmap with its counts (or each row's fractions) written in the cells."""
    values = matrix.astype(np.float64)
    if normalize:
        rows = values.sum(axis=1, keepdims=True)
        values = np.divide(values, rows, out=np.zeros_like(values), where=rows > 0)
    side = min(16.0, max(4.0, 0.45 * len(classes) + 2))
    fig, ax = pyplot().subplots(figsize=(side + 1, side))
    image = ax.imshow(values, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fontsize = 8 if len(classes) <= 40 else 5
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(classes)), classes, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        top = values.max() if values.size else 0
        for (r, c), v in np.ndenumerate(values):
            if v:
                ax.text(c, r, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else " (counts)"), fontsize=10)
    return save_figure(fig, out_png)


def plot_thresholds(curves: Mapping[str, Mapping[str, np.ndarray]], best: Mapping[str, Any],
                    out_png: str | os.PathLike, max_panels: int = 16) -> Path | None:
    """Precision, recall and F1 against the score threshold, the best F1 marked: one panel per class, or with more
    than `max_panels` classes one panel of every class's F1 (thin) and their mean (bold), on a 0.01 grid."""
    names = list(curves)
    if not names:
        return None
    if len(names) > max_panels:
        grid = np.linspace(0, 1, 101)
        fig, ax = pyplot().subplots(figsize=(6, 4))
        stacked = []
        for name in names:
            curve = curves[name]  # thresholds decrease; a grid point keeps the detections scoring at least it
            index = np.searchsorted(-curve["threshold"], -grid, side="right") - 1
            f1 = np.where(index >= 0, curve["f1"][np.maximum(index, 0)], 0.0)
            stacked.append(f1)
            ax.plot(grid, f1, color="0.6", lw=0.5, alpha=0.6)
        ax.plot(grid, np.mean(stacked, axis=0), color="C2", lw=2.5, label=f"mean F1 over {len(names)} classes")
        ax.set_xlabel("score threshold")
        ax.set_ylabel("F1")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return save_figure(fig, out_png)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        curve = curves[name]
        ax.set_visible(True)
        for key, style in (("precision", "-"), ("recall", "--"), ("f1", "-")):
            ax.plot(curve["threshold"], curve[key], style, lw=2 if key == "f1" else 1.2, label=key)
        ax.axvline(best[name]["threshold"], color="k", lw=0.8, alpha=0.6)
        ax.set_title(f"{name}: F1 {best[name]['f1']:.2f} at {best[name]['threshold']:.2f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("score threshold", fontsize=9)
    return save_figure(fig, out_png, dpi=110)


def draw_worst_cases(run: TideRun, detections: Detections, records: Sequence[GroundTruth],
                     class_names: Sequence[str], load: Callable[[GroundTruth], np.ndarray], out_dir: Path,
                     per_type: int = 5) -> list[Path]:
    """For each TIDE error type its highest-scoring examples (a Miss: the largest boxes), drawn on their images
    (enlarged to a 480-pixel shorter side when smaller): the detection in red with the error, its class and score,
    the box it points at (or the missed box) in green with its class."""
    by_id = {rec.image_id: rec for rec in records}
    written = []
    green, red = (40, 200, 40), (230, 30, 30)
    for kind in MAIN_ERRORS:
        # a detection inside an ignored region is named by TIDE but costs nothing: not drawn
        errors = [e for e in run.errors if e.kind == kind and (kind == "Miss" or e.original is not None)]
        errors.sort(key=lambda e: -(_box_area(by_id[e.image_id], e.index) if kind == "Miss" else e.score))
        for k, e in enumerate(errors[:per_type]):
            rec = by_id[e.image_id]
            gts, gt_labels = rec.boxes[~rec.ignore], rec.labels[~rec.ignore]
            boxes, texts, colors = [], [], []
            shown_gt = e.index if kind == "Miss" else e.gt_index
            if shown_gt >= 0:
                boxes.append(gts[shown_gt])
                texts.append(("missed " if kind == "Miss" else "") + class_names[int(gt_labels[shown_gt]) - 1])
                colors.append(green)
            if kind != "Miss":
                boxes.append(np.asarray(detections[e.image_id]["boxes"][int(run.kept[e.image_id][e.index])]))
                texts.append(f"{kind}: {class_names[e.label - 1]} {e.score:.2f}")
                colors.append(red)
            image = load(rec)
            scale = max(1.0, 480 / min(image.shape[:2]))
            if scale > 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            picture = draw_boxes(image, np.asarray(boxes, dtype=np.float64) * scale, texts, colors)
            written.append(save_image(picture, out_dir / f"{kind}_{k + 1}_{Path(rec.name).stem}.jpg"))
    return written


def _box_area(rec: GroundTruth, index: int) -> float:
    box = rec.boxes[~rec.ignore][index]
    return float((box[2] - box[0]) * (box[3] - box[1]))


# ----- the whole analysis ----------------------------------------------------------------------------------------
def analyze(detections: Detections, records: Sequence[GroundTruth], class_names: Sequence[str],
            output_dir: str | os.PathLike, *, load_image: Callable[[GroundTruth], np.ndarray] | None = None,
            conf_thresh: float = 0.5, iou_thresh: float = 0.5, examples: int = 5,
            notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write `analysis.json`, `analysis.md`, `tide.png`, `confusion.png`, `confusion_normalized.png`,
    `thresholds.png` and (with `load_image`) `analysis/<error>_<k>_<image>.jpg` to `output_dir`; returns what
    `analysis.json` holds. Detections of images that are not among `records` are left out and counted; what was
    left out, and the caller's `notes`, are listed in `analysis.md` and under `"notes"`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = {rec.image_id for rec in records}
    foreign = [i for i in detections if i not in known]
    kept = {i: d for i, d in detections.items() if i in known}
    notes = list(notes)
    if foreign:
        notes.append(f"{sum(len(detections[i]['scores']) for i in foreign)} detections on {len(foreign)} images that "
                     "are not in the annotations were left out")
    total = sum(len(d["scores"]) for d in kept.values())
    if not total:
        notes.append("there are no detections: every box is a Miss")
    with_gt = {int(c) for rec in records for c in rec.labels[~rec.ignore]}
    no_gt = [name for c, name in enumerate(class_names, start=1) if c not in with_gt]
    if no_gt:
        notes.append(f"{', '.join(no_gt)} has no ground truth: no threshold, and in TIDE an AP of 0 where it has "
                     "detections (as TIDE counts it)")
    run = TideRun(kept, records, pos_thresh=iou_thresh)
    tide_result = summarize(run, class_names)
    matrix = confusion_matrix(kept, records, len(class_names), iou_thresh, conf_thresh)
    best, curves = best_f1_thresholds(kept, records, class_names, iou_thresh)
    classes = [*class_names, "background"]
    result = {"tide": tide_result,
              "confusion": {"classes": classes, "matrix": matrix.tolist(), "iou_thresh": iou_thresh,
                            "conf_thresh": conf_thresh},
              "thresholds": best, "notes": notes}
    (out / "analysis.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot_tide(tide_result, out / "tide.png")
    plot_confusion(matrix, classes, out / "confusion.png")
    plot_confusion(matrix, classes, out / "confusion_normalized.png", normalize=True)
    plot_thresholds(curves, best, out / "thresholds.png")
    if load_image is not None and examples:
        draw_worst_cases(run, kept, records, class_names, load_image, out / "analysis", examples)
    (out / "analysis.md").write_text(report(result), encoding="utf-8")
    return result


def analyze_dataset(detections: Detections, dataset, output_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """`analyze` on a detection dataset's records and classes, drawing the worst cases on its images when they
    can be read (not when only the annotations were given: a note says so)."""
    notes = []
    load = None
    records = dataset.ground_truth()
    paths = {}
    try:
        paths = {rec.image_id: dataset.image_path(i) for i, rec in enumerate(records)}
        missing = next((p for p in paths.values() if not Path(p).is_file()), None)
    except UserError as exc:
        missing = str(exc)
    if missing is None:
        def load(rec: GroundTruth) -> np.ndarray:
            return read_image(paths[rec.image_id])
    else:
        notes.append(f"the worst cases are not drawn: the images cannot be read ({missing} is not there)")
    return analyze(detections, records, dataset.class_names, output_dir, load_image=load, notes=notes, **options)


def tide_line(result: Mapping[str, Any]) -> str:
    """`AP50 61.2; AP lost to Miss 12.3, Loc 4.1, ...` (largest first)."""
    ranked = sorted(MAIN_ERRORS, key=lambda k: -result["main"][k])
    return f"AP50 {result['AP']:.2f}; AP lost to " + ", ".join(f"{k} {result['main'][k]:.2f}" for k in ranked)


ADVICE = {
    "Cls": "boxes found but named wrongly: more examples of the confused classes (see the confusion matrix), or "
           "merge classes people cannot tell apart either",
    "Loc": "objects found but boxed loosely: more training, a finer RoIAlign / FPN, anchors that fit the object "
           "shapes, or check that the boxes were drawn consistently",
    "Both": "wrong class and a loose box at once: usually a sign of too little training",
    "Dupe": "two detections of one object: a lower NMS threshold (model.roi.nms_thresh)",
    "Bkg": "false alarms on background: images without objects in training (data.keep_empty), harder background, "
           "or a higher score threshold",
    "Miss": "objects never found: anchors and input size that fit small objects (model.anchor_sizes, "
            "model.min_size), more proposals, more examples of them",
}


def report(result: Mapping[str, Any]) -> str:
    """`analysis.md`: the TIDE table with what to do about the largest errors, the thresholds, the notes."""
    t = result["tide"]
    lines = ["# Error analysis", "", f"TIDE (AP@{result['confusion']['iou_thresh']}: {t['AP']:.2f}): the AP points "
             "each error type would give back if it alone were fixed (Bolya et al., ECCV 2020).", "",
             "| error | AP gained | count | what it means, what to try |", "|---|---|---|---|"]
    for kind in sorted(MAIN_ERRORS, key=lambda k: -t["main"][k]):
        lines.append(f"| {kind} | {t['main'][kind]:.2f} | {t['counts'][kind]} | {ADVICE[kind]} |")
    special = t["special"]
    lines += ["", f"Special: perfect scores (every false positive below every true one) +{special['FalsePos']:.2f}; "
              f"perfect recall +{special['FalseNeg']:.2f}.", "",
              "![TIDE](tide.png)", "", f"Confusion matrix at IoU {result['confusion']['iou_thresh']} and score >= "
              f"{result['confusion']['conf_thresh']}: ![counts](confusion.png) ![rows](confusion_normalized.png)", "",
              "Score threshold of best F1 per class (`predict.py --score-thresh best` uses the ones stored with the "
              "model):", "", "| class | threshold | precision | recall | F1 |", "|---|---|---|---|---|"]
    for name, best in result["thresholds"].items():
        lines.append(f"| {name} | " + (" | ".join(f"{best[k]:.3f}" for k in ("threshold", "precision", "recall", "f1"))
                                        if best else "n/a | | |") + " |")
    lines += ["", "![thresholds](thresholds.png)", "", "The highest-scoring examples of each error type are drawn in "
              "`analysis/` (detection red, its box green)."]
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"
