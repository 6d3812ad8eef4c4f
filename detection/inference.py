"""Running a detector over a dataset (batched, sharded over processes) and scoring it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detection.data.common import DetectionDataset, collate_detection
from detection.evaluation.evaluator import evaluate_detections
from detection.faster_rcnn import FasterRCNN, inference_copy
from detection.tiling import Tiling
from detection.transform import DetectionTransform
from engine.distributed import all_gather_object, all_reduce, get_rank, get_world_size
from engine.logs import progress_bar
from engine.precision import autocast
from engine.sampler import ShardSampler, seeded_loader

Detections = dict[int, dict[str, np.ndarray]]


def run_inference(model: FasterRCNN, dataset: DetectionDataset, device: torch.device, batch_size: int = 2,
                  workers: int = 2, amp: str = "none", progress: bool = True, compile: bool = False,
                  tiling: Tiling | None = None) -> Detections:
    """`{image_id: {"boxes", "scores", "labels"}}` for every image of `dataset`, gathered from all processes.
    Runs an inference copy of `model` (frozen BN folded, channels-last; see `inference_copy`), so `model`
    itself, in training or not, is left as it was. With `tiling`, each image runs as tiles (`batch_size` tiles
    at a time) whose detections are merged in its coordinates."""
    fast = inference_copy(model, compile=compile)
    loader = seeded_loader(dataset, ShardSampler(len(dataset), batch_size, get_rank(), get_world_size()), workers,
                           collate_detection)
    mine: Detections = {}
    def detect(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast(device, amp):
            return fast([im.to(device, non_blocking=True) for im in images])

    heads = model.roi_heads
    for images, targets in progress_bar(loader, enabled=progress, desc="inference", leave=False):
        outputs = detect(images) if tiling is None else [
            tiling.predict(detect, im, batch_size, heads.nms_thresh, heads.detections_per_image) for im in images]
        for target, out in zip(targets, outputs, strict=True):
            mine[int(target["image_id"])] = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                                             for k, v in out.items()}
    merged: Detections = {}
    for part in all_gather_object(mine):
        merged.update(part)
    return merged


@torch.no_grad()
def validation_losses(model: FasterRCNN, dataset: DetectionDataset, device: torch.device, batch_size: int = 2,
                      workers: int = 2, amp: str = "none", seed: int = 0) -> dict[str, float]:
    """The training losses of `model` on an evaluation set, image-weighted means over every process: `loss` (their
    sum) and each term. Computed as training computes them (anchor and RoI sampling, ground truth added to the
    proposals) at the test size, with normalisation and dropout in inference mode (statistics are not updated)
    and the sampling drawn from `seed`, so that two evaluations differ only by the weights and the run's own
    random stream is not touched. `model` is left in the mode it was in."""
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, (_BatchNorm, nn.Dropout, DetectionTransform)):
            module.eval()  # running statistics, no dropout, the test size
    view = dataset.without_augmentation()
    loader = seeded_loader(view, ShardSampler(len(view), batch_size, get_rank(), get_world_size()), workers,
                           collate_detection)
    totals: dict[str, torch.Tensor] = {}
    images_seen = torch.zeros((), device=device)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for images, targets in loader:
                targets = [{**t, "boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
                with autocast(device, amp):
                    losses = model([im.to(device, non_blocking=True) for im in images], targets)
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value.float() * len(images)
                images_seen += len(images)
    finally:
        model.train(was_training)
    names = sorted(totals)
    sums = all_reduce(torch.stack([totals[n] for n in names] + [images_seen]), "sum").tolist()
    means = {name: total / max(sums[-1], 1.0) for name, total in zip(names, sums, strict=False)}
    return {"loss": sum(means.values()), **means}


def default_metrics(dataset_name: str) -> list[str]:
    """COCO AP for COCO-format data and YOLO datasets (ultralytics' mAP50-95; AP50 beside it), the VOC07 11-point
    metric for VOC07-tested sets, VOC12 for VOC12-tested ones, both VOC07 and COCO for the shapes set; a VOC-layout
    or LabelMe folder of one's own: VOC12 (the area under the precision envelope, mAP@0.5) and COCO AP."""
    return {"coco": ["coco"], "yolo": ["coco"], "shapes": ["voc07", "coco"], "voc": ["voc12", "coco"],
            "labelme": ["voc12", "coco"], "voc07": ["voc07"], "voc0712": ["voc07"], "voc12": ["voc12"],
            "voc07++12": ["voc12"]}[dataset_name]


def score(detections: Detections, dataset: DetectionDataset, metrics: Sequence[str], output_dir=None,
          backend: str = "pycocotools") -> dict[str, Any]:
    """`{"<metric>": result}` for each metric (see `evaluate_detections`)."""
    return {metric: evaluate_detections(detections, dataset.ground_truth(), dataset.class_names, metric,
                                        coco_gt=getattr(dataset, "coco", None),
                                        label_to_category=getattr(dataset, "label_to_category", None),
                                        backend=backend, output_dir=output_dir) for metric in metrics}


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Scalars for logging: `voc07_mAP`, `coco_AP`, `coco_AP50`, ..."""
    flat = {}
    for metric, result in results.items():
        for key, value in result.items():
            if isinstance(value, (int, float)):
                flat[f"{metric}_{key}"] = float(value)
    return flat
