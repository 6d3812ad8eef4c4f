"""Large images as overlapping tiles: prediction and evaluation on tiles with results in whole-image coordinates,
and training on tiles.

A tile grid covers the image with `tile` x `tile` windows stepped by `tile * (1 - overlap)`, the last row and
column aligned to the image's border (no padding past it); a side shorter than `tile` is one window of that side.
Each tile is run through the detector as an image of its own (the model resizes it as any image), its detections
are shifted back, a detection that touches an inner border of its tile is dropped when another tile holds the
same box whole (the object was cut), and what several tiles found twice is merged: per-class NMS, or SAHI's
greedy merge (boxes overlapping a better one by `iou` of the smaller's area are merged into it: their union, its
score). `full_image` adds a pass over the whole image at the model's normal size, which keeps large objects.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from detection.data.common import DetectionDataset, GroundTruth, load_image, to_tensors
from engine.errors import UserError

MERGES = ("nms", "greedy")
EDGE = 1.0  # pixels: a box this close to an inner tile border touches it


def check_tiling(tile: int, overlap: float) -> None:
    """One-line errors for values that make no grid."""
    if tile < 32:
        raise UserError(f"--tile {tile}: a tile must be at least 32 pixels")
    if not 0 <= overlap < 1:
        raise UserError(f"--tile-overlap {overlap}: must be in [0, 1)")


def tile_grid(height: int, width: int, tile: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """The (x0, y0, x1, y1) windows, row by row; a tile larger than the image in a direction is the image's side."""
    check_tiling(tile, overlap)
    step = max(1, round(tile * (1 - overlap)))

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        out = list(range(0, size - tile, step))
        return [*out, size - tile]

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def _cut_by_a_border(boxes: torch.Tensor, window: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """Boxes (image coordinates) touching an inner border of `window` (one that is not the image's)."""
    x0, y0, x1, y1 = window
    touches = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        touches |= boxes[:, 0] <= x0 + EDGE
    if y0 > 0:
        touches |= boxes[:, 1] <= y0 + EDGE
    if x1 < width:
        touches |= boxes[:, 2] >= x1 - EDGE
    if y1 < height:
        touches |= boxes[:, 3] >= y1 - EDGE
    return touches


def drop_cut_boxes(parts: list[dict[str, torch.Tensor]], windows: Sequence[tuple[int, int, int, int]], height: int,
                   width: int) -> list[dict[str, torch.Tensor]]:
    """Per tile, its detections without those cut by an inner border of the tile that another tile holds whole
    (inside it without touching its inner borders)."""
    out = []
    for k, (det, window) in enumerate(zip(parts, windows, strict=True)):
        cut = _cut_by_a_border(det["boxes"], window, height, width)
        if cut.any():
            held = torch.zeros_like(cut)
            for j, other in enumerate(windows):
                if j == k:
                    continue
                ox0, oy0, ox1, oy1 = other
                b = det["boxes"]
                inside = (b[:, 0] >= ox0) & (b[:, 1] >= oy0) & (b[:, 2] <= ox1) & (b[:, 3] <= oy1)
                held |= inside & ~_cut_by_a_border(b, other, height, width)
            keep = ~(cut & held)
            det = {key: value[keep] for key, value in det.items()}
        out.append(det)
    return out


def greedy_merge(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5
                 ) -> dict[str, torch.Tensor]:
    """SAHI's greedy merge (GREEDYNMM, intersection over the smaller box), class by class: best first, each box not
    yet absorbed absorbs the others of its class that overlap it by `threshold` of the smaller one's area; it
    becomes the union of its group and keeps its score. Returns the merged boxes, best first."""
    out: dict[str, list[torch.Tensor]] = {"boxes": [], "scores": [], "labels": []}
    for label in labels.unique():
        mine = labels == label
        order = torch.argsort(scores[mine], descending=True, stable=True)
        b, s = boxes[mine][order], scores[mine][order]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        inter = (torch.minimum(b[:, None, 2:], b[None, :, 2:]) - torch.maximum(b[:, None, :2], b[None, :, :2])
                 ).clamp(min=0).prod(dim=2)
        overlaps = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-9) >= threshold
        absorbed = torch.zeros(len(b), dtype=torch.bool)
        for i in range(len(b)):
            if absorbed[i]:
                continue
            group = overlaps[i] & ~absorbed
            group[i] = True
            absorbed |= group
            members = b[group]
            out["boxes"].append(torch.cat([members[:, :2].min(dim=0).values, members[:, 2:].max(dim=0).values]))
            out["scores"].append(s[i])
            out["labels"].append(label)
    if not out["boxes"]:
        return {"boxes": boxes[:0], "scores": scores[:0], "labels": labels[:0]}
    merged = {k: torch.stack(v) for k, v in out.items()}
    order = torch.argsort(merged["scores"], descending=True, stable=True)
    return {k: v[order] for k, v in merged.items()}


def merge_detections(parts: list[dict[str, torch.Tensor]], merge: str = "nms", iou: float = 0.5,
                     max_detections: int = 100) -> dict[str, torch.Tensor]:
    """The tiles' detections (image coordinates) as one image's: duplicates merged, best first, at most
    `max_detections`."""
    if merge not in MERGES:
        raise UserError(f"--tile-merge {merge!r}: one of {', '.join(MERGES)}")
    boxes = torch.cat([p["boxes"] for p in parts])
    scores = torch.cat([p["scores"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    if merge == "nms":
        keep = batched_nms(boxes.float(), scores.float(), labels, iou)[:max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    out = greedy_merge(boxes, scores, labels, iou)
    return {k: v[:max_detections] for k, v in out.items()}


def predict_tiled(detect: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]], image: torch.Tensor,
                  tile: int, overlap: float = 0.2, batch_size: int = 4, full_image: bool = False,
                  merge: str = "nms", iou: float = 0.5, max_detections: int = 100) -> dict[str, torch.Tensor]:
    """One image's detections from its tiles (see the module docstring). `detect` maps a list of (3, h, w) images to
    their detections in those images' pixels (a `FasterRCNN` in eval mode); `image` is (3, H, W)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    windows = tile_grid(height, width, tile, overlap)
    parts = []
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        outputs = detect([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in group])
        for (x0, y0, _, _), out in zip(group, outputs, strict=True):
            shift = torch.tensor([x0, y0, x0, y0], dtype=out["boxes"].dtype, device=out["boxes"].device)
            parts.append({"boxes": out["boxes"] + shift, "scores": out["scores"], "labels": out["labels"]})
    parts = [{k: v.cpu() for k, v in p.items()} for p in drop_cut_boxes(
        [{k: v.cpu() for k, v in p.items()} for p in parts], windows, height, width)]
    if full_image:
        parts += [{k: v.cpu() for k, v in detect([image])[0].items()}]
    return merge_detections(parts, merge, iou, max_detections)


@dataclass(frozen=True)
class Tiling:
    """How a detector runs on large images: `tile` x `tile` windows overlapping by `overlap`, duplicates merged by
    `merge` (`nms` or `greedy`), and with `full_image` a whole-image pass added."""

    tile: int
    overlap: float = 0.2
    merge: str = "nms"
    full_image: bool = False

    def __post_init__(self) -> None:
        check_tiling(self.tile, self.overlap)
        if self.merge not in MERGES:
            raise UserError(f"--tile-merge {self.merge!r}: one of {', '.join(MERGES)}")

    def predict(self, detect: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]], image: torch.Tensor,
                batch_size: int, iou: float, max_detections: int) -> dict[str, torch.Tensor]:
        return predict_tiled(detect, image, self.tile, self.overlap, batch_size, self.full_image, self.merge, iou,
                             max_detections)


def add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tile`, `--tile-overlap`, `--tile-merge`, `--tile-full-image` (predict.py, eval_det.py)."""
    group = parser.add_argument_group("large images")
    group.add_argument("--tile", type=int, metavar="SIZE", help="run on SIZE x SIZE tiles of each image and merge "
                       "their detections (objects small relative to the image)")
    group.add_argument("--tile-overlap", type=float, default=0.2, help="tiles overlap by this fraction (default 0.2)")
    group.add_argument("--tile-merge", choices=MERGES, default="nms", help="duplicates across tiles: per-class NMS "
                       "(default) or SAHI's greedy merge")
    group.add_argument("--tile-full-image", action="store_true", help="also run on the whole image (large objects)")


def tiling_from_args(args: argparse.Namespace) -> Tiling | None:
    """The `Tiling` the flags describe, None without `--tile` (whose companions then must not be given)."""
    if args.tile is None:
        if args.tile_full_image or args.tile_merge != "nms" or args.tile_overlap != 0.2:
            raise UserError("--tile-overlap, --tile-merge and --tile-full-image apply with --tile SIZE")
        return None
    return Tiling(args.tile, args.tile_overlap, args.tile_merge, args.tile_full_image)


class TiledDataset(DetectionDataset):
    """A training set of tiles cut from a dataset's images: the grid of every image (`tile_grid`), each tile's
    boxes clipped to it and kept where at least `min_visible` of their area remains; every tile with an object,
    and tiles without any to make up `background` of the set (drawn once from `seed`, so that resuming reads the
    same set). Records are the tiles'; `transform` (augmentation) applies to the tile."""

    def __init__(self, dataset: DetectionDataset, tile: int, overlap: float = 0.2, min_visible: float = 0.5,
                 background: float = 0.2, seed: int = 0) -> None:
        super().__init__(dataset.transform, dataset.train)
        if not 0 < min_visible <= 1 or not 0 <= background < 1:
            raise UserError(f"data.tile_min_visible {min_visible} must be in (0, 1], data.tile_background "
                            f"{background} in [0, 1)")
        self.base, self.class_names = dataset, dataset.class_names
        if hasattr(dataset, "label_to_category"):  # COCO-format data: the category ids results files use
            self.label_to_category = dataset.label_to_category
        with_objects, empty = [], []
        for index, rec in enumerate(dataset.records):
            for window in tile_grid(rec.height, rec.width, tile, overlap):
                cut = self._cut(rec, window, min_visible)
                (with_objects if (~cut.ignore).any() else empty).append((index, window, cut))
        wanted = round(background / (1 - background) * len(with_objects)) if with_objects else len(empty)
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(empty), min(wanted, len(empty)), replace=False).tolist()) if empty else []
        self.tiles = with_objects + [empty[i] for i in chosen]
        if not self.tiles:
            raise UserError("the tiled training set is empty")
        self.records = [cut for _, _, cut in self.tiles]

    @staticmethod
    def _cut(rec: GroundTruth, window: tuple[int, int, int, int], min_visible: float) -> GroundTruth:
        x0, y0, x1, y1 = window
        boxes = rec.boxes.copy()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        np.clip(boxes[:, 0::2], x0, x1, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], y0, y1, out=boxes[:, 1::2])
        visible = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = (visible > 0) & (visible >= min_visible * area)
        shifted = boxes[keep] - np.array([x0, y0, x0, y0], dtype=np.float64)
        return GroundTruth(rec.image_id, f"{rec.name}@{x0},{y0}", x1 - x0, y1 - y0, shifted, rec.labels[keep],
                           rec.ignore[keep])

    def image_path(self, index: int):
        return self.base.image_path(self.tiles[index][0])

    def __getitem__(self, index: int):
        base_index, (x0, y0, x1, y1), rec = self.tiles[index]
        image = load_image(self.base.image_path(base_index))[y0:y1, x0:x1]
        keep = ~rec.ignore if self.train else np.ones(len(rec.labels), dtype=bool)
        target = {"boxes": rec.boxes[keep].astype(np.float32), "labels": rec.labels[keep], "image_id": rec.image_id}
        if self.transform is not None:
            return self.transform(np.ascontiguousarray(image), target)
        return to_tensors(image, target)
