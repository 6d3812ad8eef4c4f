#!/usr/bin/env python
"""Evaluate detections: COCO AP (pycocotools or faster-coco-eval) and PASCAL VOC AP (devkit, 07 and 12).

    # a COCO results file alone
    python tools/eval_det.py --annotations instances_val2017.json --results dets.json --metric coco
    # a trained detector on your own COCO json, or on your own VOC-layout folder (classes from the checkpoint)
    python tools/eval_det.py --checkpoint runs/mine/model_best.pth --annotations data/val.json --images data/images
    python tools/eval_det.py --checkpoint runs/raccoon/model_final.pth --dataset voc --data data/raccoon \
        --split test --metric voc12 coco
    # devkit-format results (comp4_det_test_<class>.txt) on VOC2007 test
    python tools/eval_det.py --dataset voc07 --data VOCdevkit --split test --results results/ --metric voc07
    # VOC metrics on a COCO-format set
    python tools/eval_det.py --dataset shapes --data data/shapes --results dets.json --metric voc07
    # VOC2012 test / COCO test-dev (no public annotations): results files to submit, no scores
    python tools/eval_det.py --checkpoint runs/det/model_final.pth --dataset voc07++12 --data VOCdevkit --split test \
        --no-eval --output results/VOC2012/Main
    # run a trained detector (batched, progress bar, torchrun-aware) and evaluate it
    python tools/eval_det.py --checkpoint runs/det/model_final.pth --dataset voc07 --data VOCdevkit --split test \
        --metric voc07 --output runs/det/eval
    # why it errs: TIDE, confusion matrix, best-F1 thresholds, worst cases drawn (from a results file too)
    python tools/eval_det.py --checkpoint runs/det/model_best.pth --annotations val.json --analyze --output analysis/
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

from detection.build import load_detector
from detection.data.catalog import DATASETS, build_detection_dataset, parse_class_names
from detection.evaluation.analysis import analyze_dataset, tide_line
from detection.evaluation.coco import BACKENDS, detections_to_coco_results, read_coco_results, write_coco_results
from detection.evaluation.evaluator import (
    DETECTION_METRICS,
    coco_results_to_detections,
    per_class_report,
    summary_line,
    write_metrics_json,
)
from detection.evaluation.voc import read_voc_results, write_voc_results
from detection.inference import default_metrics, run_inference, score
from detection.tiling import add_tiling_arguments, tiling_from_args
from engine.cli import ToolParser, fraction, non_negative_int, positive_int, run_cli
from engine.distributed import init_distributed
from engine.errors import UserError
from engine.logs import get_logger
from engine.precision import AMP_CHOICES

log = get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--annotations", "--val-ann", dest="annotations",
                        help="a COCO-format json (any name) instead of --dataset/--data")
    parser.add_argument("--images", "--val-images", dest="images",
                        help="the image folder of --annotations (default: the json's folder)")
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--data", help="dataset root (COCO: with annotations/; VOC: the VOCdevkit or your folder)")
    parser.add_argument("--split", help="default: the dataset's test split (val2017, val, test); for --dataset voc "
                        "also a list file")
    parser.add_argument("--classes", help="--dataset voc: a,b,c or a file (default: the checkpoint's classes)")
    parser.add_argument("--ignore-unknown-classes", action="store_true",
                        help="skip (and count) annotated objects of other classes instead of stopping")
    parser.add_argument("--checkpoint", help="a detector this toolkit trained or converted (model_final.pth, "
                        "model_best.pth): run it on the dataset")
    parser.add_argument("--results", help="COCO results json, or a folder of devkit files (instead of --checkpoint)")
    parser.add_argument("--metric", choices=DETECTION_METRICS, nargs="+", default=None,
                        help="one or more of coco, voc07, voc12 (default: coco; with --checkpoint the dataset's own)")
    parser.add_argument("--no-eval", action="store_true", help="with --checkpoint: write the results files to "
                        "--output without scoring (VOC2012 test, COCO test-dev: no public annotations)")
    parser.add_argument("--batch-size", type=positive_int, help="images per inference batch (--checkpoint; default 2)")
    parser.add_argument("--workers", type=non_negative_int, help="image loading processes (--checkpoint; default 2)")
    parser.add_argument("--device", help="where --checkpoint runs (default auto)")
    parser.add_argument("--amp", choices=AMP_CHOICES, help="run the network in bf16/fp16 (--checkpoint)")
    parser.add_argument("--compile", action="store_true", help="run the convolutions under torch.compile (a slow "
                        "first batch; pays off over many)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--backend", choices=BACKENDS, default="pycocotools", help="COCO evaluation backend")
    parser.add_argument("--json", help="write the metrics to this file")
    parser.add_argument("--analyze", action="store_true", help="also explain the errors (TIDE, confusion matrix, "
                        "best-F1 score thresholds, worst cases drawn) in --output (docs/analysis.md)")
    add_tiling_arguments(parser)
    parser.add_argument("--conf-thresh", type=fraction, default=0.5,
                        help="--analyze: the score a detection needs to enter the confusion matrix (default 0.5)")
    parser.add_argument("--output", help="folder for results files (COCO json, devkit txt), PR curves, tables")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    if bool(args.checkpoint) == bool(args.results):
        raise UserError("give exactly one of --checkpoint (run a detector) and --results (score a file)")
    if not (args.annotations or (args.dataset and args.data)):
        raise UserError("give --annotations GT.json, or --dataset and --data")
    if args.no_eval and not (args.checkpoint and args.output):
        raise UserError("--no-eval writes the detections of --checkpoint to --output: give both")
    running = [args.batch_size, args.workers, args.device, args.amp, args.compile or None]
    if args.results and any(v is not None for v in running):
        raise UserError("--batch-size, --workers, --device, --amp and --compile run a detector: they do not apply to "
                        "--results")
    if args.split and args.annotations:
        raise UserError("--split names a split of --dataset/--data; --annotations is the evaluation set itself")
    if args.json and args.no_eval:
        raise UserError("--json writes scores, which --no-eval does not compute")
    args.batch_size, args.workers = args.batch_size or 2, 2 if args.workers is None else args.workers
    args.device, args.amp = args.device or "auto", args.amp or "none"
    if args.analyze and (not args.output or args.no_eval):
        raise UserError("--analyze writes its files to --output: give it (and no --no-eval)")
    tiling = tiling_from_args(args)
    if tiling is not None and not args.checkpoint:
        raise UserError("--tile runs a detector on tiles: it needs --checkpoint")
    model, class_names = None, None
    if args.checkpoint:
        model, _, class_names = load_detector(args.checkpoint)
    data = {"dataset": args.dataset or "coco", "root": args.data, "val_split": args.split,
            "val_ann": args.annotations, "val_images": args.images, "classes": parse_class_names(args.classes),
            "ignore_unknown_classes": args.ignore_unknown_classes}
    dataset = build_detection_dataset(data, train=False, class_names=class_names, annotated=not args.no_eval)
    records, names = dataset.ground_truth(), dataset.class_names
    metrics = args.metric or (default_metrics(data["dataset"]) if args.checkpoint else ["coco"])
    dist = init_distributed(args.device)
    if model is not None:
        if list(class_names) != list(names):
            raise UserError(f"{args.checkpoint}: trained for classes {', '.join(class_names)}, but the dataset has "
                            f"{', '.join(names)}")
        detections = run_inference(model.to(dist.device), dataset, dist.device, args.batch_size, args.workers,
                                   args.amp, progress=not args.no_progress, compile=args.compile, tiling=tiling)
        if args.output and dist.is_main and hasattr(dataset, "image_sets"):
            written = write_voc_results(args.output, dataset.image_sets[0][1], detections, records, names)
        elif args.no_eval and dist.is_main:
            written = [write_coco_results(detections_to_coco_results(detections, dataset.label_to_category),
                                          Path(args.output) / "coco_results.json")]
        if args.no_eval:
            if dist.is_main:
                log.info(f"{len(detections)} images, {sum(len(d['scores']) for d in detections.values())} "
                         f"detections -> {len(written)} results file(s) in {args.output}")
            return 0
    else:
        detections = load_results(Path(args.results), dataset, args.split)
    if not dist.is_main:
        return 0
    results = score(detections, dataset, metrics, args.output, args.backend)
    for metric, result in results.items():
        log.info(f"{metric} per class:\n{per_class_report(metric, result)}")
        log.info(f"{metric}: {summary_line(metric, result)}")
    if args.json:
        write_metrics_json(args.json, results)
    if args.analyze:
        analysis = analyze_dataset(detections, dataset, args.output, conf_thresh=args.conf_thresh)
        log.info(f"analysis: {tide_line(analysis['tide'])} -> {Path(args.output) / 'analysis.md'}")
        for note in analysis["notes"]:
            log.info(f"analysis: {note}")
    return 0


def load_results(results: Path, dataset, split: str | None):
    """Detections from a folder of devkit files or a COCO results json."""
    records, names = dataset.ground_truth(), dataset.class_names
    if results.is_dir():
        split = split or (dataset.image_sets[0][1] if hasattr(dataset, "image_sets") else "test")
        return read_voc_results(results, split, records, names)
    label_to_category = getattr(dataset, "label_to_category", None)
    if label_to_category is None:
        raise UserError(f"{results}: a COCO results file needs a COCO-format dataset; give a folder of "
                        "comp4_det_<split>_<class>.txt files for VOC sets")
    raw = read_coco_results(results)
    known = {cid: label for label, cid in label_to_category.items()}
    bad = {r["category_id"] for r in raw} - known.keys()
    if bad:
        raise UserError(f"{results}: unknown category_id {sorted(bad)[0]}")
    return coco_results_to_detections(raw, known)


if __name__ == "__main__":
    sys.exit(run_cli(main))
