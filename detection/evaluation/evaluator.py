"""One entry point for every metric on every dataset: `evaluate_detections(...)`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detection.data.common import GroundTruth
from detection.evaluation.coco import (
    METRICS,
    RECALL_METRICS,
    coco_evaluate,
    coco_gt_from_records,
    detections_to_coco_results,
    write_coco_results,
)
from detection.evaluation.plots import per_class_table, plot_pr_curves
from detection.evaluation.voc import voc_evaluate
from engine.errors import UserError

DETECTION_METRICS = ("coco", "voc07", "voc12")


def evaluate_detections(detections: Mapping[int, Mapping[str, Any]], records: Sequence[GroundTruth],
                        class_names: Sequence[str], metric: str, *, coco_gt: COCO | None = None,
                        label_to_category: Mapping[int, int] | None = None, backend: str = "pycocotools",
                        output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score `{image_id: {"boxes" xyxy, "scores", "labels" 1..K}}` against a dataset's records.

    `coco`: COCOeval on `coco_gt` (the dataset's own COCO file) or on one built from the records, returns
    `{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", ..., "per_class"}`; `voc07` / `voc12`: devkit AP at IoU
    0.5 with the 11-point / area metric, returns `{"mAP", "per_class"}`. All in %. With `output_dir`, writes
    `per_class_<metric>.md`, the COCO results file (`coco_results.json`) and for VOC metrics `pr_curves_<metric>.png`.
    """
    if metric not in DETECTION_METRICS:
        raise UserError(f"unknown metric {metric!r}; valid: {', '.join(DETECTION_METRICS)}")
    out = Path(output_dir) if output_dir is not None else None
    if metric == "coco":
        if coco_gt is None:
            coco_gt, label_to_category = coco_gt_from_records(records, class_names), None
        results = detections_to_coco_results(detections, label_to_category)
        if out is not None:
            write_coco_results(results, out / "coco_results.json")
        result = coco_evaluate(coco_gt, results, backend)
    else:
        voc = voc_evaluate(detections, records, class_names, use_07_metric=metric == "voc07")
        result = {"mAP": voc["mAP"], "per_class": voc["per_class"]}
        if out is not None and voc["curves"]:
            plot_pr_curves(voc["curves"], voc["per_class"], out / f"pr_curves_{metric}.png",
                           title=f"{metric} mAP {voc['mAP']:.2f}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"per_class_{metric}.md").write_text(per_class_report(metric, result) + "\n", encoding="utf-8")
    return result


def summary_line(metric: str, result: Mapping[str, Any]) -> str:
    if metric == "coco":
        return "  ".join(f"{k} {'n/a' if result[k] is None else f'{result[k]:.2f}'}" for k in METRICS)
    return f"mAP {result['mAP']:.2f} ({metric})"


def per_class_report(metric: str, result: Mapping[str, Any]) -> str:
    """The per-class AP table of one metric's result (markdown), the mean in its last row."""
    return per_class_table(result["per_class"], result["AP" if metric == "coco" else "mAP"],
                           "AP@[.5:.95] (%)" if metric == "coco" else "AP@0.5 (%)")


def coco_results_to_detections(results: Sequence[Mapping[str, Any]],
                               category_to_label: Mapping[int, int]) -> dict[int, dict[str, np.ndarray]]:
    """COCO results json entries -> `{image_id: {"boxes" xyxy, "scores", "labels"}}`."""
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for r in results:
        grouped.setdefault(int(r["image_id"]), []).append(r)
    detections = {}
    for image_id, rs in grouped.items():
        xywh = np.array([r["bbox"] for r in rs], dtype=np.float64).reshape(-1, 4)
        detections[image_id] = {"boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                                "scores": np.array([r["score"] for r in rs], dtype=np.float64),
                                "labels": np.array([category_to_label[r["category_id"]] for r in rs])}
    return detections


def write_metrics_json(path: str | os.PathLike, results: Mapping[str, Mapping[str, Any]]) -> None:
    """One metric: `{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", ..., "ARl", "per_class"}` (COCO) or
    `{"mAP", "per_class"}` (VOC), in %, null where there is nothing to measure; several: those objects keyed
    by metric name."""
    def pick(metric: str, result: Mapping[str, Any]) -> dict[str, Any]:
        keys = (*METRICS, *RECALL_METRICS, "per_class") if metric == "coco" else ("mAP", "per_class")
        return {k: result[k] for k in keys if k in result}

    picked = {metric: pick(metric, result) for metric, result in results.items()}
    body = next(iter(picked.values())) if len(picked) == 1 else picked
    Path(path).write_text(json.dumps(body, indent=2), encoding="utf-8")
