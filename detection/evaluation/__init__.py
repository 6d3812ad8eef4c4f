"""Detection evaluation: COCO AP (pycocotools / faster-coco-eval), VOC AP (devkit), results files, plots."""

from detection.evaluation.coco import (
    coco_evaluate,
    coco_gt_from_records,
    detections_to_coco_results,
    evaluate_coco_files,
    write_coco_results,
)
from detection.evaluation.plots import per_class_table, plot_pr_curves
from detection.evaluation.voc import read_voc_results, voc_ap, voc_evaluate, write_voc_results

__all__ = ["coco_evaluate", "coco_gt_from_records", "detections_to_coco_results", "evaluate_coco_files",
           "per_class_table", "plot_pr_curves", "read_voc_results", "voc_ap", "voc_evaluate", "write_coco_results",
           "write_voc_results"]
