"""Training a classifier of the registry on ImageNet, CIFAR-10 or the synthetic set with `engine.Trainer`.

`train_classifier(cfg, output_dir)` is what `tools/train_cls.py` calls; `DEFAULTS` lists every config key.
The run leaves `model_final.pth` (architecture, options and a torchvision-compatible state dict, which the
detector reads), `metrics.jsonl`, `metrics.json`, TensorBoard logs, `curves.png` and checkpoints.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

import backbones
from classification.data import CIFAR10, ImageFolder, SyntheticImages, collate_skip_bad
from classification.evaluate import check_classifier_weights, evaluate
from classification.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceTrainTransform,
    eval_transform,
    train_transform,
)
from engine.checkpoint import save_checkpoint
from engine.config import to_dict
from engine.distributed import DistInfo, all_reduce_sum
from engine.errors import UserError
from engine.logs import close_file_log, get_logger
from engine.metrics import MetricWriter, plot_curves, read_metrics
from engine.sampler import GlobalBatchSampler, SeededDataset, ShardSampler
from engine.schedule import LRSchedule
from engine.trainer import Trainer, TrainerOptions, start_run

DATASETS = ("imagenet", "cifar10", "synthetic")

DEFAULTS: dict[str, Any] = {
    "model": {"arch": "resnet18", "options": {}, "weights": None},
    "data": {
        "dataset": "synthetic", "root": None, "train_split": None, "val_split": None, "workers": 2,
        "skip_bad_images": False, "crop_size": None, "scale_range": [256, 480], "lighting": 0.1, "pad_fill": "mean",
        "decode_on_device": False, "test_resize": 256, "test_scales": [224, 256, 384, 480, 640],
        "synthetic": {"train_size": 2048, "val_size": 512, "num_classes": 10, "image_size": 32},
    },
    "solver": {
        "batch_size": 256, "accumulate": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False,
        "max_iter": 600_000, "epochs": None, "steps": [], "gamma": 0.1, "warmup_iters": 0, "warmup_factor": 0.1,
        "warmup_method": "constant", "warmup_until_error": None, "error_window": 50, "plateau_patience": 0,
        "plateau_threshold": 0.1, "clip_grad_norm": 0.0,
    },
    "train": {
        "seed": 0, "device": "auto", "amp": "none", "channels_last": False, "compile": False, "log_period": 20,
        "eval_period": 0, "checkpoint_period": 5000, "keep_checkpoints": 2, "eval_batch_size": 100, "recompute_bn": 0,
        "progress": True,
    },
}
OPEN_KEYS = ("model.options",)
# the values each key may take (engine.config.check_limits)
LIMITS = {"data.workers": "[0, inf)", "data.crop_size": "[1, inf)", "data.scale_range": "[1, inf)",
          "data.lighting": "[0, inf)", "data.test_resize": "[1, inf)", "data.test_scales": "[1, inf)",
          "data.synthetic.train_size": "[1, inf)", "data.synthetic.val_size": "[1, inf)",
          "data.synthetic.num_classes": "[2, inf)", "data.synthetic.image_size": "[8, inf)",
          "solver.batch_size": "[1, inf)", "solver.accumulate": "[1, inf)", "solver.lr": "(0, inf)",
          "solver.momentum": "[0, 1)", "solver.weight_decay": "[0, inf)", "solver.max_iter": "[1, inf)",
          "solver.epochs": "(0, inf)", "solver.steps": "[1, inf)", "solver.gamma": "(0, inf)",
          "solver.warmup_iters": "[0, inf)", "solver.warmup_factor": "[0, 1]", "solver.warmup_until_error": "[0, 100]",
          "solver.error_window": "[1, inf)", "solver.plateau_patience": "[0, inf)",
          "solver.plateau_threshold": "[0, inf)", "solver.clip_grad_norm": "[0, inf)", "train.log_period": "[1, inf)",
          "train.eval_period": "[0, inf)", "train.checkpoint_period": "[1, inf)", "train.keep_checkpoints": "[1, inf)",
          "train.eval_batch_size": "[1, inf)", "train.recompute_bn": "[0, inf)", "train.amp": "{none, bf16, fp16}",
          "data.pad_fill": "{mean, zero}", "solver.warmup_method": "{constant, linear}",
          "data.dataset": "{imagenet, cifar10, synthetic}"}
logger = get_logger("classification")


def _style(dataset: str) -> str:
    return "imagenet" if dataset == "imagenet" else "cifar"


def build_dataset(cfg: DictConfig, split: str, transform: Any, train: bool) -> tuple[Dataset, int]:
    """The dataset `cfg.data.dataset` for `split` (None: the dataset's usual train/val split) and its class count."""
    data = cfg.data
    if data.dataset not in DATASETS:
        raise UserError(f"unknown dataset {data.dataset!r}; valid: {', '.join(DATASETS)}")
    if data.dataset == "synthetic":
        syn = data.synthetic
        size = syn.train_size if train else syn.val_size
        ds = SyntheticImages(size, syn.num_classes, syn.image_size, seed=0 if train else 1, transform=transform)
        return ds, syn.num_classes
    if data.root is None:
        raise UserError(f"--data DIR is required for dataset {data.dataset}")
    if data.dataset == "cifar10":
        ds = CIFAR10(data.root, split or ("train" if train else "test"), transform)
        return ds, 10
    ds = ImageFolder(Path(data.root) / (split or ("train" if train else "val")), transform, data.skip_bad_images,
                     decode_min_side=max(data.scale_range) if train else None,  # JPEGs > 2x decode smaller
                     encoded=train and data.decode_on_device)
    return ds, len(ds.classes)


def crop_size(cfg: DictConfig) -> int:
    if cfg.data.crop_size:
        return cfg.data.crop_size
    if cfg.data.dataset == "synthetic":
        return cfg.data.synthetic.image_size
    return 224 if cfg.data.dataset == "imagenet" else 32


def eval_loader(cfg: DictConfig, dist: DistInfo, mode: str = "center", split: str | None = None,
                batch_size: int | None = None) -> DataLoader:
    data = cfg.data
    transform = eval_transform(_style(data.dataset), mode, crop_size(cfg), data.test_resize, data.test_scales)
    dataset, _ = build_dataset(cfg, split or data.val_split, transform, train=False)
    batch = 1 if mode == "multi_scale" else (batch_size or cfg.train.eval_batch_size)
    return DataLoader(SeededDataset(dataset), batch_sampler=ShardSampler(len(dataset), batch, dist.rank,
                                                                          dist.world_size),
                      num_workers=data.workers, collate_fn=collate_skip_bad, pin_memory=dist.device.type == "cuda",
                      generator=torch.Generator())


def build_schedule(solver: DictConfig) -> LRSchedule:
    return LRSchedule(solver.lr, steps=solver.steps, gamma=solver.gamma, warmup_iters=solver.warmup_iters,
                      warmup_factor=solver.warmup_factor, warmup_method=solver.warmup_method,
                      warmup_until_error=solver.warmup_until_error, error_window=solver.error_window,
                      plateau_patience=solver.plateau_patience, plateau_threshold=solver.plateau_threshold)


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches, num_batches: int, device: torch.device) -> None:
    """Re-estimate every BN's running statistics as a plain average over `num_batches` training batches
    (the "precise BN" pass before the statistics are frozen for detection)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    for _ in range(num_batches):
        model(next(batches)[0].to(device))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum


# what `--resume` may change in a run's saved configuration (see detection.train.RESUME_MAY_CHANGE)
RESUME_MAY_CHANGE = ("solver.max_iter", "data.root", "data.workers", "train.device", "train.progress",
                     "train.log_period", "train.checkpoint_period", "train.keep_checkpoints", "train.eval_batch_size")


def final_checkpoint(model: nn.Module, cfg: DictConfig, class_names: list[str]) -> dict[str, Any]:
    """What the detector and `eval_cls.py` read: architecture, options, class names, the test data and
    transform that gave the error training reported (the `data` section) and a plain state dict."""
    style = _style(cfg.data.dataset)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if style == "imagenet" else (CIFAR_MEAN, CIFAR_STD)
    return {"arch": cfg.model.arch, "options": to_dict(cfg.model.options), "num_classes": len(class_names),
            "class_names": list(class_names), "test": {"data": to_dict(cfg.data)},
            "pixel_mean": list(mean), "pixel_std": list(std), "channel_order": "RGB",
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def train_classifier(cfg: DictConfig, output_dir: str | os.PathLike, resume: bool | str = False) -> dict[str, float]:
    """Train per `cfg`; returns the final validation metrics (errors in %)."""
    output_dir, dist, log_file = start_run(cfg, output_dir, resume)
    try:
        return _train(cfg, output_dir, dist, resume)
    finally:
        close_file_log(log_file)


def _train(cfg: DictConfig, output_dir: Path, dist: DistInfo, resume: bool | str) -> dict[str, float]:
    solver, data = cfg.solver, cfg.data

    style = _style(data.dataset)
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
    train_model: nn.Module = model
    if dist.world_size > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
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
        batches = iter(DataLoader(SeededDataset(train_set), batch_sampler=sampler, num_workers=data.workers,
                                  collate_fn=collate_skip_bad, pin_memory=dist.device.type == "cuda",
                                  persistent_workers=data.workers > 0,
                                  generator=torch.Generator()))  # never draw from the global RNG
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
    options = TrainerOptions(max_iter=max_iter, output_dir=output_dir, accumulate=solver.accumulate,
                             amp=cfg.train.amp, log_period=cfg.train.log_period, eval_period=cfg.train.eval_period,
                             checkpoint_period=cfg.train.checkpoint_period, progress=cfg.train.progress,
                             keep_checkpoints=cfg.train.keep_checkpoints, clip_grad_norm=solver.clip_grad_norm,
                             best_metric="error" if cfg.train.eval_period else None, best_mode="min")
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
        summary = {**metrics, "iterations": trainer.iteration, "skipped_images": skipped}
        if trainer.best is not None:
            summary["best"] = {**trainer.best, "checkpoint": "model_best.pth"}
        logger.info(f"final model -> {final}")
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        plot_curves({cfg.model.arch: read_metrics(output_dir)}, output_dir / "curves.png",
                    title=f"{cfg.model.arch} on {data.dataset}")
    writer.close()
    return metrics
