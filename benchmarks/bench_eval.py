"""Detection evaluation speed: our COCO path against pycocotools called directly, with both backends, our VOC
evaluation, and the error analysis (`eval_det.py --analyze`: TIDE, confusion matrix, thresholds, plots; no images
drawn) against the plain evaluation, on a synthetic set of N images x D detections (default 5,000 x 100, 80
classes).

    python -m benchmarks.bench_eval [--images 5000] [--dets 100] [--no-analyze]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.common import machine_line
from detection.data.coco import coco_from_dict
from detection.data.common import GroundTruth
from detection.evaluation.analysis import analyze
from detection.evaluation.coco import coco_evaluate
from detection.evaluation.evaluator import coco_results_to_detections
from detection.evaluation.voc import voc_evaluate


def synthetic(images: int, dets: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in range(1, classes + 1)]}
    results = []
    for i in range(1, images + 1):
        gt["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        n = int(rng.integers(1, 15))
        xy = rng.uniform(0, 450, (n, 2))
        wh = rng.uniform(8, 200, (n, 2))
        cats = rng.integers(1, classes + 1, n)
        for b, c in zip(np.c_[xy, wh].tolist(), cats.tolist(), strict=True):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": c, "bbox": b,
                                      "area": b[2] * b[3], "iscrowd": 0})
        pick = rng.integers(0, n, dets)
        boxes = np.c_[xy[pick], wh[pick]] + rng.normal(0, 10, (dets, 4))
        boxes[:, 2:] = np.abs(boxes[:, 2:]) + 1
        dcats = np.where(rng.random(dets) < 0.7, cats[pick], rng.integers(1, classes + 1, dets))
        for b, c, s in zip(boxes.tolist(), dcats.tolist(), rng.random(dets).tolist(), strict=True):
            results.append({"image_id": i, "category_id": c, "bbox": b, "score": s})
    return gt, results


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--no-analyze", action="store_true", help="skip timing the error analysis")
    args = parser.parse_args()
    gt, results = synthetic(args.images, args.dets, args.classes)
    print(f"{args.images} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} detections; "
          f"{machine_line(torch.device('cpu'))}")

    def direct() -> list[float]:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            e = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        return list(e.stats)

    def ours(backend: str) -> dict[str, float]:
        return coco_evaluate(coco_from_dict(gt), results, backend)

    ref, t_ref = timed(direct)
    fast, t_fast = timed(lambda: ours("faster_coco_eval"))
    mine, t_mine = timed(lambda: ours("pycocotools"))
    same = np.allclose([v / 100 for v in list(mine.values())[:12]], ref, atol=1e-12)
    same_fast = np.allclose([v / 100 for v in list(fast.values())[:12]], ref, atol=1e-10)
    print(f"pycocotools directly: {t_ref:.1f} s")
    print(f"ours, pycocotools backend: {t_mine:.1f} s  speed ratio {t_ref / t_mine:.2f}  (identical: {same})")
    print(f"ours, faster-coco-eval backend: {t_fast:.1f} s  speed ratio {t_ref / t_fast:.2f}  (same AP: {same_fast})")

    records = []
    cat_ids = {c["id"]: c["id"] for c in gt["categories"]}
    by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img in gt["images"]:
        anns = by_image.get(img["id"], [])
        xywh = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        records.append(GroundTruth(img["id"], str(img["id"]), 640, 480, np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]],
                                   np.array([a["category_id"] for a in anns]), np.zeros(len(anns), bool)))
    detections = coco_results_to_detections(results, cat_ids)
    names = [c["name"] for c in gt["categories"]]
    voc, t_voc = timed(lambda: voc_evaluate(detections, records, names, use_07_metric=True))
    print(f"ours, VOC07 metric: {t_voc:.2f} s (mAP {voc['mAP']:.2f})")
    if not args.no_analyze:
        with tempfile.TemporaryDirectory() as out:
            result, t_analysis = timed(lambda: analyze(detections, records, names, out))
        print(f"error analysis (TIDE, confusion, thresholds, plots): {t_analysis:.1f} s, {t_analysis / t_mine:.2f}x "
              f"the plain COCO evaluation (TIDE AP50 {result['tide']['AP']:.2f})")


if __name__ == "__main__":
    main()
