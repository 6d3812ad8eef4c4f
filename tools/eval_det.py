#!/usr/bin/env python
"""Evaluate detections: COCO AP (pycocotools or faster-coco-eval) and PASCAL VOC AP (devkit, 07 and 12).

    # a COCO results file alone
    python tools/eval_det.py --annotations instances_val2017.json --results dets.json --metric coco
    # devkit-format results (comp4_det_test_<class>.txt) on VOC2007 test
    python tools/eval_det.py --dataset voc07 --data VOCdevkit --split test --results results/ --metric voc07
    # VOC metrics on a COCO-format set
    python tools/eval_det.py --dataset shapes --data data/shapes --results dets.json --metric voc07
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from detection.data.catalog import DATASETS, build_detection_dataset
from detection.data.coco import CocoDetection
from detection.evaluation.coco import BACKENDS, read_coco_results
from detection.evaluation.evaluator import (
    DETECTION_METRICS,
    coco_results_to_detections,
    evaluate_detections,
    summary_line,
    write_metrics_json,
)
from detection.evaluation.plots import per_class_table
from detection.evaluation.voc import read_voc_results
from engine.cli import run_cli
from engine.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--annotations", help="COCO-format ground truth json (instead of --dataset/--data)")
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--data", help="dataset root (COCO/shapes: with annotations/; VOC: the VOCdevkit folder)")
    parser.add_argument("--split", help="default: the dataset's test split (val2017, val, test)")
    parser.add_argument("--results", required=True, help="COCO results json, or a folder of devkit files")
    parser.add_argument("--metric", choices=DETECTION_METRICS, default="coco")
    parser.add_argument("--backend", choices=BACKENDS, default="pycocotools", help="COCO evaluation backend")
    parser.add_argument("--json", help="write the metrics to this file")
    parser.add_argument("--output", help="folder for PR curves and the per-class table (VOC metrics)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    if args.annotations:
        dataset = CocoDetection(args.annotations, None)
    elif args.dataset and args.data:
        dataset = build_detection_dataset(args.dataset, args.data, args.split)
    else:
        raise UserError("give --annotations GT.json, or --dataset and --data")
    records, names = dataset.ground_truth(), dataset.class_names
    coco_gt = getattr(dataset, "coco", None)
    label_to_category = getattr(dataset, "label_to_category", None)
    results = Path(args.results)
    if results.is_dir():
        split = args.split or (dataset.image_sets[0][1] if hasattr(dataset, "image_sets") else "test")
        detections = read_voc_results(results, split, records, names)
    else:
        if coco_gt is None:
            raise UserError(f"{results}: a COCO results file needs a COCO-format dataset; give a folder of "
                            "comp4_det_<split>_<class>.txt files for VOC sets")
        raw = read_coco_results(results)
        known = {cid: label for label, cid in label_to_category.items()}
        bad = {r["category_id"] for r in raw} - known.keys()
        if bad:
            raise UserError(f"{results}: unknown category_id {sorted(bad)[0]}")
        detections = coco_results_to_detections(raw, known)
    result = evaluate_detections(detections, records, names, args.metric, coco_gt=coco_gt,
                                 label_to_category=label_to_category, backend=args.backend, output_dir=args.output)
    if args.metric != "coco":
        print(per_class_table(result["per_class"], result["mAP"]))
    print(summary_line(args.metric, result))
    if args.json:
        write_metrics_json(args.json, args.metric, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
