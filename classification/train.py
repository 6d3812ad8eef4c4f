"""Training a classifier of the registry on ImageNet, CIFAR-10 or the synthetic set with `engine.Trainer`.

`train_classifier(cfg, output_dir)` is what `tools/train_cls.py` calls; `DEFAULTS` lists every config key.
The run leaves `model_final.pth` (architecture, options and a torchvision-compatible state dict, which the
detector reads), `metrics.jsonl`, `metrics.json`, TensorBoard logs, `curves.png` and checkpoints.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

import backbones
from classification.data import build_dataset, collate_skip_bad, crop_size, dataset_style
from classification.evaluate import check_classifier_weights, eval_loader, evaluate
from classification.precise_bn import recompute_bn_stats
from classification.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceTrainTransform,
    train_transform,
)
from engine.checkpoint import save_checkpoint
from engine.config import to_dict
from engine.distributed import DistInfo, all_reduce_sum
from engine.errors import UserError
from engine.logs import get_logger
from engine.metrics import MetricWriter, plot_curves, read_metrics
from engine.sampler import GlobalBatchSampler, seeded_loader
from engine.schedule import LRSchedule
from engine.trainer import Trainer, data_parallel, run_training, trainer_options, write_summary

logger = get_logger("classification")


def build_schedule(solver: DictConfig) -> LRSchedule:
    return LRSchedule(solver.lr, steps=solver.steps, gamma=solver.gamma, warmup_iters=solver.warmup_iters,
                      warmup_factor=solver.warmup_factor, warmup_method=solver.warmup_method,
                      warmup_until_error=solver.warmup_until_error, error_window=solver.error_window,
                      plateau_patience=solver.plateau_patience, plateau_threshold=solver.plateau_threshold)


def final_checkpoint(model: nn.Module, cfg: DictConfig, class_names: list[str]) -> dict[str, Any]:
    """What the detector and `eval_cls.py` read: architecture, options, class names, the test data and
    transform that gave the error training reported (the `data` section) and a plain state dict."""
    style = dataset_style(cfg.data.dataset)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if style == "imagenet" else (CIFAR_MEAN, CIFAR_STD)
    return {"arch": cfg.model.arch, "options": to_dict(cfg.model.options), "num_classes": len(class_names),
            "class_names": list(class_names), "test": {"data": to_dict(cfg.data)},
            "pixel_mean": list(mean), "pixel_std": list(std), "channel_order": "RGB",
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def train_classifier(cfg: DictConfig, output_dir: str | os.PathLike, resume: bool | str = False) -> dict[str, float]:
    """Train per `cfg`; returns the final validation metrics (errors in %)."""
    return run_training(cfg, output_dir, resume, lambda folder, dist: _train(cfg, folder, dist, resume))


def _train(cfg: DictConfig, output_dir: Path, dist: DistInfo, resume: bool | str) -> dict[str, float]:
    solver, data = cfg.solver, cfg.data

    style = dataset_style(data.dataset)
    train_tf = train_transform(style, crop_size(cfg), data.scale_range, data.lighting, data.pad_fill)
    train_set, num_classes = build_dataset(cfg, data.train_split, train_tf, train=True)
    val_loader = eval_loader(cfg, dist)
    max_iter = solver.max_iter
    if solver.epochs is not None:
        max_iter = max(1, round(solver.epochs * len(train_set) / solver.batch_size))

    model = backbones.build_model(cfg.model.arch, num_classes, **to_dict(cfg.model.options))
    if cfg.model.weights:
        weights = backbones.read_weights(cfg.model.weights)
        check_classifier_weights(weights, to_dict(cfg.model.options))
        head = backbones.features.model_head_prefixes(model)
        head_fits = all(weights.state_dict.get(k) is not None and weights.state_dict[k].shape == v.shape
                        for k, v in model.state_dict().items() if k.startswith(head))
        backbones.load_weights(model, weights, arch=cfg.model.arch, skip_prefixes=() if head_fits else head)
    model.to(dist.device)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    train_model = data_parallel(model, dist)
    forward = torch.compile(train_model) if cfg.train.compile else train_model

    optimizer = torch.optim.SGD(model.parameters(), lr=solver.lr, momentum=solver.momentum,
                                weight_decay=solver.weight_decay, nesterov=solver.nesterov)
    bad_images = [0]
    if data.decode_on_device and data.dataset != "imagenet":
        raise UserError(f"data.decode_on_device: only for ImageNet-layout JPEG folders, not {data.dataset}")
    device_tf = DeviceTrainTransform(crop_size(cfg), data.scale_range, data.lighting, dist.device) \
        if data.decode_on_device else None

    def make_batches(start_iter: int):
        sampler = GlobalBatchSampler(len(train_set), solver.batch_size, accumulate=solver.accumulate,
                                     rank=dist.rank, world_size=dist.world_size, seed=cfg.train.seed,
                                     start_iter=start_iter)
        batches = iter(seeded_loader(train_set, sampler, data.workers, collate_skip_bad,
                                     pin_memory=dist.device.type == "cuda", persistent=True))
        if device_tf is None:
            return batches
        return ((device_tf(images), labels, bad) for images, labels, bad in batches)

    def step(_model: nn.Module, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        images, labels, bad = batch
        bad_images[0] += bad
        images = images.to(dist.device, non_blocking=True, memory_format=fmt)
        labels = labels.to(dist.device, non_blocking=True)
        logits = forward(images)
        error = 100.0 * (logits.detach().argmax(1) != labels).float().mean()  # on the device: no sync
        return {"loss_cls": F.cross_entropy(logits, labels)}, {"error": error}

    def run_eval(module: nn.Module) -> dict[str, float]:
        return evaluate(module, val_loader, dist.device, channels_last=cfg.train.channels_last)

    class_names = list(train_set.classes)
    options = trainer_options(cfg, output_dir, max_iter, "error" if cfg.train.eval_period else None, "min")
    writer = MetricWriter(output_dir, enabled=dist.is_main)
    trainer = Trainer(train_model, optimizer, build_schedule(solver), make_batches, step, options, dist,
                      evaluate=run_eval, writer=writer,
                      checkpoint_extra=lambda: {"arch": cfg.model.arch, "options": to_dict(cfg.model.options),
                                                "num_classes": num_classes, "config": to_dict(cfg)},
                      save_best=lambda: save_checkpoint(final_checkpoint(model, cfg, class_names),
                                                        output_dir / "model_best.pth"))
    trainer.resume_from(resume)
    metrics = trainer.train()

    if cfg.train.recompute_bn:
        recompute_bn_stats(model, make_batches(0), cfg.train.recompute_bn, dist.device)
        metrics = trainer.run_eval(feed_schedule=False)
    skipped = int(all_reduce_sum(torch.tensor([bad_images[0]], device=dist.device)).item())
    if dist.is_main:
        if skipped:
            warnings.warn(f"skipped {skipped} unreadable training images", stacklevel=3)
        final = save_checkpoint(final_checkpoint(model, cfg, class_names), output_dir / "model_final.pth")
        write_summary(output_dir, trainer, metrics, skipped_images=skipped)
        logger.info(f"final model -> {final}")
        plot_curves({cfg.model.arch: read_metrics(output_dir)}, output_dir / "curves.png",
                    title=f"{cfg.model.arch} on {data.dataset}")
    writer.close()
    return metrics
