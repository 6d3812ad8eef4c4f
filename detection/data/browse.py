"""A look at a detection dataset before training on it: counts per class, empty images, duplicate and tiny boxes,
box sizes and shapes at the size the model will see them, and how well the recipe's anchors fit them (ultralytics'
autoanchor report, for Faster R-CNN anchors), as numbers and pictures. `tools/browse_data.py` prints and draws
them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detection.data.common import DetectionDataset
from engine.metrics import pyplot, save_figure


def input_scales(widths: np.ndarray, heights: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """The factor each image is resized by at test time (shorter side to `min_size`, longer side at most
    `max_size`), as `detection.transform.resized_shape` does."""
    return np.minimum(min_size / np.minimum(widths, heights), max_size / np.maximum(widths, heights))


def anchor_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(A, 2) widths and heights of every anchor: area size^2, height / width = ratio (`detection.anchors`)."""
    sizes, ratios = np.asarray(sizes, dtype=np.float64), np.asarray(aspect_ratios, dtype=np.float64)
    widths = (sizes[:, None] / np.sqrt(ratios)[None, :]).reshape(-1)
    heights = (sizes[:, None] * np.sqrt(ratios)[None, :]).reshape(-1)
    return np.stack([widths, heights], axis=1)


def best_anchor_iou(box_wh: np.ndarray, anchors_wh: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """For each box (N, 2 widths and heights) the IoU of the best anchor shape placed at its centre: the overlap
    an anchor at the right place can reach (the RPN wants >= 0.7 to call an anchor positive, 0.5 is what a
    proposal needs to train the detector)."""
    best = np.zeros(len(box_wh))
    for start in range(0, len(box_wh), chunk):
        wh = box_wh[start:start + chunk, None, :]
        inter = np.minimum(wh, anchors_wh[None]).prod(axis=2)
        union = wh.prod(axis=2) + anchors_wh.prod(axis=1)[None] - inter
        best[start:start + chunk] = (inter / np.maximum(union, 1e-12)).max(axis=1)
    return best


def dataset_statistics(dataset: DetectionDataset, model: Mapping[str, Any]) -> dict[str, Any]:
    """Counts, box sizes and the anchor fit of `dataset` under `model` (a detection config's `model` section:
    `min_size`, `max_size`, `test_min_size`, `anchor_sizes`, `aspect_ratios`). Sizes are sqrt(area) in pixels at
    the model's input scale; ignored objects (crowds, VOC difficult) are counted apart and left out of the rest."""
    records = dataset.ground_truth()
    names = list(dataset.class_names)
    counts = np.array([len(r.labels) for r in records])
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4))
    labels = np.concatenate([r.labels for r in records]).astype(np.int64) if records else np.zeros(0, np.int64)
    ignore = np.concatenate([r.ignore for r in records]) if records else np.zeros(0, bool)
    image_of = np.repeat(np.arange(len(records)), counts)
    widths = np.array([r.width for r in records], dtype=np.float64)
    heights = np.array([r.height for r in records], dtype=np.float64)
    test_size = model.get("test_min_size") or list(model["min_size"])[-1]
    scale = input_scales(widths, heights, test_size, model["max_size"])[image_of] if len(boxes) else np.zeros(0)
    real = ~ignore
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) * scale[:, None]
    wh = wh[real]
    size = np.sqrt(wh.prod(axis=1))
    aspect = wh[:, 1] / np.maximum(wh[:, 0], 1e-12)
    anchors = anchor_shapes(model["anchor_sizes"], model["aspect_ratios"])
    fit = best_anchor_iou(wh, anchors) if len(wh) else np.zeros(0)
    # duplicates: the same class and the same box (to a hundredth of a pixel) twice in one image
    key = np.concatenate([image_of[real, None], labels[real, None], np.round(boxes[real] * 100)], axis=1)
    duplicates = len(key) - len(np.unique(key, axis=0)) if len(key) else 0
    per_class = {}
    for c, name in enumerate(names, start=1):
        mine = labels[real] == c
        per_class[name] = {"boxes": int(mine.sum()), "images": len(np.unique(image_of[real][mine])),
                           "ignored": int(((labels == c) & ignore).sum())}
    order = np.argsort(fit)[:5]
    return {
        "images": len(records), "empty_images": int(sum(1 for r in records if not (~r.ignore).any())),
        "boxes": int(real.sum()), "ignored_boxes": int(ignore.sum()), "duplicate_boxes": int(duplicates),
        "tiny_boxes": int((size < 4).sum()), "per_class": per_class,
        "input_size": {"min_size": int(test_size), "max_size": int(model["max_size"])},
        "size_quantiles": _quantiles(size), "aspect_quantiles": _quantiles(aspect),
        "anchors": {"sizes": list(model["anchor_sizes"]), "aspect_ratios": list(model["aspect_ratios"]),
                    "boxes_best_iou_below_0.5": int((fit < 0.5).sum()),
                    "boxes_best_iou_below_0.7": int((fit < 0.7).sum()),
                    "mean_best_iou": float(fit.mean()) if len(fit) else None,
                    "worst": [{"size": float(size[i]), "aspect": float(aspect[i]), "best_iou": float(fit[i])}
                              for i in order]},
        "_size": size, "_aspect": aspect, "_fit": fit,
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    levels = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
    if not len(values):
        return {}
    return {f"{q:.2f}": float(v) for q, v in zip(levels, np.quantile(values, levels), strict=True)}


def plot_statistics(stats: Mapping[str, Any], out_png: str | os.PathLike, title: str = "") -> Path:
    """Boxes per class; box sizes (log scale) with the anchor sizes marked; aspect ratios with the anchor ratios;
    each box's best anchor IoU."""
    fig, axes = pyplot().subplots(2, 2, figsize=(11, 7))
    names = list(stats["per_class"])
    shown = names if len(names) <= 40 else sorted(names, key=lambda n: -stats["per_class"][n]["boxes"])[:40]
    ax = axes[0, 0]
    ax.bar(range(len(shown)), [stats["per_class"][n]["boxes"] for n in shown], color="C0")
    ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=7 if len(shown) > 15 else 9)
    ax.set_title("boxes per class" + (" (40 most frequent)" if len(shown) < len(names) else ""), fontsize=10)
    size, aspect, fit = stats["_size"], stats["_aspect"], stats["_fit"]
    ax = axes[0, 1]
    if len(size):
        bins = np.logspace(np.log10(max(size.min(), 1.0)), np.log10(max(size.max(), 2.0)), 40)
        ax.hist(np.maximum(size, 1.0), bins=bins, color="C1")
    for s in stats["anchors"]["sizes"]:
        ax.axvline(s, color="k", lw=0.8, ls="--")
    if len(size):
        _log_ticks(ax, [2**k for k in range(0, 13)], [str(2**k) for k in range(0, 13)])
    ax.set_title(f"box size sqrt(area) at the input size (shorter side {stats['input_size']['min_size']}); anchors "
                 "dashed", fontsize=9)
    ax = axes[1, 0]
    if len(aspect):
        ax.hist(np.clip(aspect, 1 / 8, 8), bins=np.logspace(np.log10(1 / 8), np.log10(8), 40), color="C2")
        _log_ticks(ax, [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    for r in stats["anchors"]["aspect_ratios"]:
        ax.axvline(r, color="k", lw=0.8, ls="--")
    ax.set_title("box aspect ratio (height / width); anchor ratios dashed", fontsize=9)
    ax = axes[1, 1]
    if len(fit):
        ax.hist(fit, bins=np.linspace(0, 1, 41), color="C3")
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.axvline(0.7, color="k", lw=0.8, ls=":")
    below = stats["anchors"]["boxes_best_iou_below_0.5"]
    ax.set_title(f"best anchor IoU per box: {below} of {stats['boxes']} below 0.5", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_png)


def _log_ticks(ax, ticks: Sequence[float], labels: Sequence[str]) -> None:
    """A log x axis labelled only at `ticks`, within the data's range."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    inside = [(t, label) for t, label in zip(ticks, labels, strict=True) if low <= t <= high]
    ax.set_xticks([t for t, _ in inside], [label for _, label in inside])
    ax.minorticks_off()


def report_lines(stats: Mapping[str, Any]) -> list[str]:
    """What `browse_data.py` prints for one split."""
    a = stats["anchors"]
    lines = [f"{stats['images']} images ({stats['empty_images']} without objects), {stats['boxes']} boxes"
             + (f" (+{stats['ignored_boxes']} ignored)" if stats["ignored_boxes"] else "")
             + f", {stats['duplicate_boxes']} duplicates, {stats['tiny_boxes']} smaller than 4 px at the input size"]
    width = max(len(n) for n in stats["per_class"]) if stats["per_class"] else 5
    lines += [f"  {name:<{width}}  {c['boxes']:>7} boxes in {c['images']:>6} images"
              + (f" (+{c['ignored']} ignored)" if c["ignored"] else "") for name, c in stats["per_class"].items()]
    if stats["size_quantiles"]:
        q, r = stats["size_quantiles"], stats["aspect_quantiles"]
        lines.append(f"box size sqrt(area) at shorter side {stats['input_size']['min_size']}: min {q['0.00']:.0f}, "
                     f"5% {q['0.05']:.0f}, median {q['0.50']:.0f}, 95% {q['0.95']:.0f}, max {q['1.00']:.0f} px; "
                     f"aspect h/w 5% {r['0.05']:.2f}, median {r['0.50']:.2f}, 95% {r['0.95']:.2f}")
        share = a["boxes_best_iou_below_0.5"] / max(stats["boxes"], 1)
        lines.append(f"anchors {a['sizes']} x {a['aspect_ratios']}: mean best IoU {a['mean_best_iou']:.2f}; "
                     f"{a['boxes_best_iou_below_0.5']} boxes ({100 * share:.1f}%) have no anchor shape at IoU >= 0.5, "
                     f"{a['boxes_best_iou_below_0.7']} none at >= 0.7"
                     + ("; change model.anchor_sizes / aspect_ratios or model.min_size" if share > 0.05 else ""))
    return lines
