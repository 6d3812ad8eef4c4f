"""Training Faster R-CNN with `engine.Trainer`: `train_detector(cfg, output_dir)` is what
`tools/train_det.py` calls. A run leaves `model_final.pth`, `metrics.jsonl`/`metrics.json`, TensorBoard
logs, `loss.png` (training and validation loss), `<metric>.png` (validation mAP), PR curves, the COCO results
file, detections drawn on validation images and the error analysis (`analysis/`)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from detection.build import (
    FRACTION,
    MODEL_DEFAULTS,
    MODEL_LIMITS,
    NON_NEGATIVE,
    POSITIVE,
    build_detector,
    describe_start,
    detector_checkpoint,
)
from detection.data.catalog import build_detection_dataset
from detection.data.common import DetectionDataset, collate_detection, load_image
from detection.data.transforms import DetectionAugmentation
from detection.evaluation.analysis import analyze_dataset, best_f1_thresholds, tide_line
from detection.inference import default_metrics, flat_metrics, run_inference, score, validation_losses
from detection.tiling import TiledDataset, Tiling
from detection.visualize import draw_detections, save_image
from engine.checkpoint import save_checkpoint
from engine.config import to_dict
from engine.logs import get_logger
from engine.metrics import MetricWriter, plot_curves, read_metrics
from engine.sampler import GlobalBatchSampler, seeded_loader
from engine.schedule import LRSchedule
from engine.trainer import Trainer, data_parallel, run_training, trainer_options, write_summary

DEFAULTS: dict[str, Any] = {
    "model": copy.deepcopy(MODEL_DEFAULTS),
    "data": {"dataset": "shapes", "root": None, "train_split": None, "val_split": None, "train_ann": None,
             "train_images": None, "val_ann": None, "val_images": None, "classes": None,
             "ignore_unknown_classes": False, "workers": 2, "flip_prob": 0.5, "photometric": False,
             "keep_empty": False, "aspect_ratio_grouping": False,
             # large images: train on tile x tile windows (0: whole images), boxes kept where tile_min_visible of
             # their area is inside, tiles without objects tile_background of the set; evaluate on tiles too
             "tile": 0, "tile_overlap": 0.2, "tile_min_visible": 0.5, "tile_background": 0.2, "tile_merge": "nms",
             "tile_full_image": False},
    "solver": {"ims_per_batch": 2, "accumulate": 1, "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005,
               "max_iter": 80000, "steps": [60000], "gamma": 0.1, "warmup_iters": 0, "warmup_factor": 0.001,
               "warmup_method": "linear", "clip_grad_norm": 0.0},
    "train": {"seed": 0, "device": "auto", "amp": "none", "log_period": 20, "eval_period": 0,
              "checkpoint_period": 5000, "keep_checkpoints": 2, "progress": True,
              "patience": 0},  # stop after this many evaluations without a new best (0: never); keeps model_best
    "test": {"metrics": None, "batch_size": 2, "backend": "pycocotools", "vis_images": 4, "vis_score_thresh": 0.5,
             "val_loss": True,  # the training losses on the evaluation set at each evaluation
             "analyze": True},  # the final model's error analysis (TIDE, confusion, thresholds) in analysis/
}
OPEN_KEYS = ("model.backbone_options",)
LIMITS = {**{f"model.{k}": v for k, v in MODEL_LIMITS.items()},
          "data.workers": NON_NEGATIVE, "data.flip_prob": FRACTION, "solver.ims_per_batch": "[1, inf)",
          "data.tile": NON_NEGATIVE, "data.tile_overlap": "[0, 0.95]", "data.tile_min_visible": "(0, 1]",
          "data.tile_background": "[0, 0.95]", "data.tile_merge": "{nms, greedy}",
          "solver.accumulate": "[1, inf)", "solver.lr": POSITIVE, "solver.momentum": "[0, 1)",
          "solver.weight_decay": NON_NEGATIVE, "solver.max_iter": "[1, inf)", "solver.steps": "[1, inf)",
          "solver.gamma": POSITIVE, "solver.warmup_iters": NON_NEGATIVE, "solver.warmup_factor": FRACTION,
          "solver.clip_grad_norm": NON_NEGATIVE, "train.log_period": "[1, inf)", "train.eval_period": NON_NEGATIVE,
          "train.checkpoint_period": "[1, inf)", "train.keep_checkpoints": "[1, inf)", "train.patience": NON_NEGATIVE,
          "test.batch_size": "[1, inf)", "test.vis_images": NON_NEGATIVE, "test.vis_score_thresh": FRACTION,
          "train.amp": "{none, bf16, fp16}", "test.backend": "{pycocotools, faster_coco_eval}",
          "solver.warmup_method": "{constant, linear}"}
logger = get_logger("detection")


# what `--resume` may change in a run's saved configuration: where the data lives, how long it runs, how it
# reports; everything else must be given as it was (or not at all)
RESUME_MAY_CHANGE = ("solver.max_iter", "data.root", "data.train_ann", "data.train_images", "data.val_ann",
                     "data.val_images", "data.workers", "train.device", "train.progress", "train.log_period",
                     "train.checkpoint_period", "train.keep_checkpoints", "test.")


def datasets(cfg: DictConfig) -> tuple[DetectionDataset, DetectionDataset | None]:
    """The training set (its tiles with `data.tile`) and the evaluation set (None when the config names none and
    the default is absent)."""
    data = cfg.data
    augment = DetectionAugmentation(data.flip_prob, data.photometric)
    train = build_detection_dataset(data, train=True, transform=augment)
    val = build_detection_dataset(data, train=False, class_names=train.class_names, optional=True)
    if data.tile:
        train = TiledDataset(train, data.tile, data.tile_overlap, data.tile_min_visible, data.tile_background,
                             cfg.train.seed)
    return train, val


def evaluation_tiling(cfg: DictConfig) -> Tiling | None:
    """How the evaluation set is run: on tiles as training saw them (`data.tile`), or whole."""
    data = cfg.data
    return Tiling(data.tile, data.tile_overlap, data.tile_merge, data.tile_full_image) if data.tile else None


def primary_metric(metrics: list[str]) -> str:
    """The key of the number that picks `model_best.pth`: COCO AP, or VOC mAP, of the first metric."""
    return "coco_AP" if metrics[0] == "coco" else f"{metrics[0]}_mAP"


def visualize(dataset: DetectionDataset, detections, out_dir: Path, count: int,
              score_thresh: float) -> list[Path]:
    """Draw the detections of the first `count` images of `dataset` to `out_dir`."""
    written = []
    for i in range(min(count, len(dataset))):
        rec = dataset.records[i]
        det = detections.get(rec.image_id, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)})
        image = draw_detections(load_image(dataset.image_path(i)), det["boxes"], det["labels"], det["scores"],
                                dataset.class_names, score_thresh)
        written.append(save_image(image, out_dir / f"{Path(rec.name).stem}.png"))
    return written


def train_detector(cfg: DictConfig, output_dir: str | os.PathLike, resume: bool | str = False) -> dict[str, Any]:
    """Train per `cfg`, evaluate with the dataset's metrics; returns `{metric: result}` of the final model."""
    return run_training(cfg, output_dir, resume, lambda folder, dist: _train(cfg, folder, dist, resume))


def _train(cfg: DictConfig, output_dir: Path, dist, resume: bool | str) -> dict[str, Any]:
    solver = cfg.solver
    train_set, val_set = datasets(cfg)
    class_names = list(train_set.class_names)
    category_ids = list(getattr(train_set, "label_to_category", {}).values()) or None
    logger.info(f"training set: {len(train_set)} images, {len(class_names)} classes ({', '.join(class_names)}); "
                + (f"evaluation set: {len(val_set)} images" if val_set is not None else "no evaluation set"))
    model = build_detector(cfg, num_classes=len(class_names)).to(dist.device)
    logger.info(describe_start(cfg))
    train_model = data_parallel(model, dist)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    schedule = LRSchedule(solver.lr, steps=solver.steps, gamma=solver.gamma, warmup_iters=solver.warmup_iters,
                          warmup_factor=solver.warmup_factor, warmup_method=solver.warmup_method)
    metrics_names = list(cfg.test.metrics or default_metrics(cfg.data.dataset))

    def make_batches(start_iter: int):
        groups = [int(r.width > r.height) for r in train_set.records] if cfg.data.aspect_ratio_grouping else None
        sampler = GlobalBatchSampler(len(train_set), solver.ims_per_batch, accumulate=solver.accumulate,
                                     rank=dist.rank, world_size=dist.world_size, seed=cfg.train.seed,
                                     start_iter=start_iter, groups=groups)
        return iter(seeded_loader(train_set, sampler, cfg.data.workers, collate_detection,
                                  pin_memory=dist.device.type == "cuda", persistent=True))

    def step(net: nn.Module, batch):
        images, targets = batch
        images = [im.to(dist.device, non_blocking=True) for im in images]
        targets = [{**t, "boxes": t["boxes"].to(dist.device), "labels": t["labels"].to(dist.device)} for t in targets]
        return net(images, targets), model.training_stats()

    last_results: dict[str, Any] = {}

    tiling = evaluation_tiling(cfg)
    loss_set = val_set if val_set is None or tiling is None else TiledDataset(
        val_set, cfg.data.tile, cfg.data.tile_overlap, cfg.data.tile_min_visible, cfg.data.tile_background,
        cfg.train.seed)

    def evaluate(module: nn.Module) -> dict[str, float]:
        losses = validation_losses(module, loss_set, dist.device, cfg.test.batch_size, cfg.data.workers,
                                   cfg.train.amp, cfg.train.seed) if cfg.test.val_loss else {}
        detections = run_inference(module, val_set, dist.device, cfg.test.batch_size, cfg.data.workers,
                                   cfg.train.amp, cfg.train.progress, tiling=tiling)
        if not dist.is_main:
            return {}
        last_results.clear()
        last_results.update(score(detections, val_set, metrics_names, output_dir, cfg.test.backend))
        last_results["_detections"] = detections
        last_results["_thresholds"] = best_f1_thresholds(detections, val_set.ground_truth(), class_names)[0]
        return {**flat_metrics({k: v for k, v in last_results.items() if not k.startswith("_")}), **losses}

    def final_state() -> dict[str, Any]:
        thresholds = last_results.get("_thresholds")
        return detector_checkpoint(model, cfg, class_names, category_ids,
                                   {n: None if t is None else t["threshold"] for n, t in thresholds.items()}
                                   if thresholds else None)

    periodic = bool(cfg.train.eval_period) and val_set is not None
    options = trainer_options(cfg, output_dir, solver.max_iter, primary_metric(metrics_names) if periodic else None)
    writer = MetricWriter(output_dir, enabled=dist.is_main)
    trainer = Trainer(train_model, optimizer, schedule, make_batches, step, options, dist,
                      evaluate=evaluate if val_set is not None else None, writer=writer,
                      checkpoint_extra=lambda: {"kind": "faster_rcnn", "config": to_dict(cfg),
                                                "class_names": class_names},
                      save_best=lambda: save_checkpoint(final_state(), output_dir / "model_best.pth"))
    trainer.resume_from(resume)
    trainer.train()
    results = {k: v for k, v in last_results.items() if not k.startswith("_")}
    if dist.is_main:
        final = save_checkpoint(final_state(), output_dir / "model_final.pth")
        write_summary(output_dir, trainer, results)
        records = read_metrics(output_dir)
        plot_curves({"loss": records}, output_dir / "loss.png", key="loss", ylabel="total loss",
                    title="training loss (dashed) and validation loss")
        if val_set is not None:
            for metric in metrics_names:
                key = "coco_AP" if metric == "coco" else f"{metric}_mAP"
                plot_curves({"val": records}, output_dir / f"{key}.png", key=key, ylabel=f"{key} (%)",
                            splits=("val",), title=f"validation {key}")
            visualize(val_set, last_results.get("_detections", {}), output_dir / "detections",
                      cfg.test.vis_images, cfg.test.vis_score_thresh)
            if cfg.test.analyze and "_detections" in last_results:
                analysis = analyze_dataset(last_results["_detections"], val_set, output_dir / "analysis")
                logger.info(f"analysis: {tide_line(analysis['tide'])} -> {output_dir / 'analysis' / 'analysis.md'}")
        logger.info(f"final model -> {final}")
    writer.close()
    return results
