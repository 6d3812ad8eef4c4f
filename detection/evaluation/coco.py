"""COCO box AP through pycocotools' COCOeval (or faster-coco-eval, which gives the same numbers faster)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detection.data.coco import coco_from_dict, is_finite_number, is_integer, load_json, read_coco_json
from detection.data.common import GroundTruth
from engine.errors import UserError

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RECALL_METRICS = ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")


def detections_to_coco_results(detections: Mapping[int, Mapping[str, Any]],
                               label_to_category: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
    """`{image_id: {"boxes": xyxy, "scores", "labels"}}` -> the COCO results json list (bbox as xywh)."""
    results = []
    for image_id, det in detections.items():
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).round(2)
        for box, score, label in zip(xywh.tolist(), np.asarray(det["scores"]).tolist(),
                                     np.asarray(det["labels"]).tolist(), strict=True):
            category = label_to_category[label] if label_to_category else int(label)
            results.append({"image_id": int(image_id), "category_id": int(category), "bbox": box,
                            "score": round(float(score), 5)})
    return results


def read_coco_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A COCO results file (a list of detections, or a dict with them under "annotations"), checked."""
    results = load_json(path, "results file")
    if isinstance(results, dict) and isinstance(results.get("annotations"), list):
        results = results["annotations"]
    if not isinstance(results, list):
        raise UserError(f"{path}: a COCO results file holds a list of detections")
    for i, r in enumerate(results):
        problem = _result_problem(r)
        if problem:
            raise UserError(f"{path}: detection {i} {problem}")
    return results


def _result_problem(r: Any) -> str | None:
    """What is wrong with one COCO results entry (None: nothing): integer ids, a finite score, and a bbox of
    four finite numbers with non-negative width and height. pycocotools would score a NaN as a perfect match."""
    if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
        return "needs image_id, category_id, bbox and score"
    for key in ("image_id", "category_id"):
        if not is_integer(r[key]):
            return f"has {key} {r[key]!r}; expected an integer"
    if not is_finite_number(r["score"]):
        return f"has score {r['score']!r}; expected a finite number"
    bbox = r["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
        return f"has bbox {bbox!r}; expected [x, y, width, height], four finite numbers"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"has bbox {bbox!r} with a negative width or height"
    return None


def coco_evaluate(coco_gt: COCO, results: Sequence[Mapping[str, Any]], backend: str = "pycocotools",
                  source: str = "results") -> dict[str, float]:
    """COCOeval bbox summary as `{"AP", "AP50", "AP75", "APs", "APm", "APl"}` and the AR figures in % (None where
    COCOeval has no ground truth to measure, e.g. APs without small objects), and `per_class` AP."""
    if backend not in BACKENDS:
        raise UserError(f"unknown COCO backend {backend!r}; valid: {', '.join(BACKENDS)}")
    unknown_images = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown_images:
        raise UserError(f"{source}: {len(unknown_images)} detections' image_id are not in the ground truth "
                        f"(e.g. {sorted(unknown_images)[0]})")
    unknown_cats = {r["category_id"] for r in results} - set(coco_gt.getCatIds())
    if unknown_cats:
        raise UserError(f"{source}: unknown category_id {sorted(unknown_cats)[0]}")
    if not results:
        warnings.warn(f"{source}: no detections; every AP is 0", stacklevel=2)
        return {**dict.fromkeys(METRICS, 0.0), "per_class": {c["name"]: 0.0 for c in coco_gt.dataset["categories"]}}
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.cocoeval import COCOeval

            gt, dt = coco_gt, coco_gt.loadRes([dict(r) for r in results])
            evaluator = COCOeval(gt, dt, "bbox")
        else:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster

            gt = FastCOCO(coco_gt.dataset)
            evaluator = COCOeval_faster(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = (*METRICS, *RECALL_METRICS)
    summary: dict[str, Any] = {name: _percent(v) for name, v in zip(names, evaluator.stats[:12], strict=True)}
    summary["per_class"] = per_class_ap(evaluator.eval["precision"], evaluator.params.catIds, coco_gt)
    return summary


def _percent(value: float) -> float | None:
    """pycocotools' -1 ("no ground truth in this range") is None (JSON null, shown n/a), not -100 %."""
    return None if value < 0 else float(value) * 100


def per_class_ap(precision: np.ndarray, category_ids: Sequence[int], coco_gt: COCO) -> dict[str, float | None]:
    """AP@[.5:.95] of each category, in %, from COCOeval's accumulated precision (IoU x recall x category x area
    x max detections): the mean over IoUs and recall points at area "all" and 100 detections, as COCOeval's
    summary computes it for all categories at once; None for a category without ground truth."""
    table = {}
    for k, cat_id in enumerate(category_ids):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        table[coco_gt.cats[cat_id]["name"]] = float(values.mean()) * 100 if values.size else None
    return table


def evaluate_coco_files(annotations: str | os.PathLike, results: str | os.PathLike,
                        backend: str = "pycocotools") -> dict[str, float]:
    """COCO AP of a results json against a COCO annotation file."""
    coco_gt = coco_from_dict(read_coco_json(annotations))
    return coco_evaluate(coco_gt, read_coco_results(results), backend, source=str(results))


def coco_gt_from_records(records: Sequence[GroundTruth], class_names: Sequence[str]) -> COCO:
    """A COCO ground truth built from dataset records (to score VOC-style sets with COCO AP): labels are
    the category ids, ignored objects become crowd regions."""
    images = [{"id": r.image_id, "file_name": r.name, "width": r.width, "height": r.height} for r in records]
    annotations = []
    for r in records:
        for box, label, ignore in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": r.image_id, "category_id": int(label),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(ignore)})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


def write_coco_results(results: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(results)), encoding="utf-8")
    return path
