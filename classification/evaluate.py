"""Top-1 / top-5 error for single-crop, 10-crop and multi-scale fully-convolutional testing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

import backbones
from backbones.weights import check_options
from classification.data import build_dataset, collate_skip_bad, crop_size, dataset_style
from classification.transforms import eval_transform
from engine.distributed import DistInfo, all_reduce_sum
from engine.errors import UserError
from engine.logs import progress_bar
from engine.precision import autocast
from engine.sampler import ShardSampler, seeded_loader


def view_probabilities(model: nn.Module, images, mode: str, channels_last: bool = False) -> torch.Tensor:
    """Class probabilities per image, averaged over the views that `mode` produced."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if mode == "multi_scale":  # a list (one per image) of lists of full images at each scale
        probs = []
        for scales in images:
            views = [s.unsqueeze(0).to(memory_format=fmt) for s in scales]
            p = [F.softmax(model(torch.cat([v, v.flip(-1)])), dim=1).mean(0) for v in views]
            probs.append(torch.stack(p).mean(0))
        return torch.stack(probs)
    if mode == "ten_crop":
        n, v = images.shape[:2]
        return F.softmax(model(images.flatten(0, 1).contiguous(memory_format=fmt)), dim=1).view(n, v, -1).mean(1)
    return F.softmax(model(images.contiguous(memory_format=fmt)), dim=1)


def topk_errors(probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of the samples have their label outside the top-k, for each k (capped at the class count)."""
    top = probs.topk(min(max(ks), probs.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return [int((~hits[:, : min(k, probs.shape[1])].any(1)).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, mode: str = "center",
             channels_last: bool = False, progress: bool = False, amp: str = "none") -> dict[str, float]:
    """`{"error", "top5_error", "count"}`, errors in %; shards of a distributed run are summed. `amp` runs the
    network in bf16/fp16 (the probabilities are averaged in float32)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in progress_bar(loader, enabled=progress, desc=f"eval ({mode})", leave=False):
        images, labels = batch[0], batch[1].to(device)
        if mode == "multi_scale":
            images = [[s.to(device) for s in scales] for scales in images]
        else:
            images = images.to(device, non_blocking=True)
        with autocast(device, amp):
            probabilities = view_probabilities(model, images, mode, channels_last)
        top1, top5 = topk_errors(probabilities.float(), labels)
        totals += torch.tensor([top1, top5, len(labels)], dtype=torch.float64, device=device)
    top1, top5, count = all_reduce_sum(totals).tolist()
    if count == 0:
        return {"error": float("nan"), "top5_error": float("nan"), "count": 0}
    return {"error": 100 * top1 / count, "top5_error": 100 * top5 / count, "count": int(count)}


def check_classifier_weights(weights: backbones.WeightFile, options: dict) -> None:
    """Weights for the classification pipeline: built with the options they record, and trained on input of
    its convention: RGB divided by a standard deviation (ImageNet's or CIFAR's statistics, which fine-tuning
    may switch between), not the BGR 0..255 pixels of MSRA / detectron2 weights."""
    check_options(weights, options)
    fmt = weights.input_format
    if fmt and (fmt.get("channel_order") != "RGB" or not all(20 <= s <= 120 for s in fmt.get("pixel_std", [58]))):
        raise UserError(f"{weights.source}: these weights expect {fmt['channel_order']} input with mean "
                        f"{fmt['pixel_mean']} and std {fmt['pixel_std']} (0..255 pixels); classification feeds "
                        "normalised RGB. Use them as a detector backbone (train_det.py sets the input format)")


def load_classifier(weights: str | backbones.WeightFile, arch: str | None = None, options: dict | None = None
                    ) -> tuple[nn.Module, str]:
    """A registry classifier with `weights` (a path or a file already read; ours or torchvision's); the
    architecture and options come from the file where it records them, the class count from its last layer."""
    if not isinstance(weights, backbones.WeightFile):
        weights = backbones.read_weights(weights)
    weights_path = weights.source
    arch = arch or weights.arch or backbones.guess_arch(weights.state_dict)
    if arch is None:
        raise UserError(f"{weights_path}: cannot tell the architecture; give --arch")
    options = {**weights.options, **(options or {})}
    check_classifier_weights(weights, options)
    head = weights.state_dict.get("fc.weight", weights.state_dict.get("classifier.6.weight"))
    if head is None:
        raise UserError(f"{weights_path}: no classifier layer (fc / classifier.6) in the weights")
    model = backbones.build_model(arch, head.shape[0], **options)
    backbones.load_weights(model, weights, arch=arch)
    return model, arch


def eval_loader(cfg: DictConfig, dist: DistInfo, mode: str = "center", split: str | None = None,
                batch_size: int | None = None) -> DataLoader:
    """Batches of the evaluation split `cfg.data` names (or `split`), with the test views of `mode`, sharded over
    the processes."""
    data = cfg.data
    transform = eval_transform(dataset_style(data.dataset), mode, crop_size(cfg), data.test_resize, data.test_scales)
    dataset, _ = build_dataset(cfg, split or data.val_split, transform, train=False)
    batch = 1 if mode == "multi_scale" else (batch_size or cfg.train.eval_batch_size)
    return seeded_loader(dataset, ShardSampler(len(dataset), batch, dist.rank, dist.world_size), data.workers,
                         collate_skip_bad, pin_memory=dist.device.type == "cuda")
