"""`Predictor`: a trained detector as a function of an image, for use from Python.

    from detection.predictor import Predictor
    predictor = Predictor("runs/det/model_final.pth", device="cuda")
    result = predictor("photo.jpg")            # or a PIL image, or an (H, W, 3) uint8 RGB array
    result["boxes"], result["scores"], result["labels"], result["names"]

Images are taken as people see them (EXIF orientation applied to files and PIL images); boxes are xyxy in
that image's pixels. No dummy targets, no transforms to apply first: resizing and normalisation are the
model's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from detection.build import detector_from_checkpoint
from detection.faster_rcnn import inference_copy
from detection.tiling import Tiling
from engine.checkpoint import load_checkpoint
from engine.distributed import resolve_device
from engine.errors import UserError
from engine.images import load_rgb
from engine.precision import autocast, check_amp

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a file path, a PIL image or such an array (copied as it is)."""
    if isinstance(image, (str, os.PathLike)):
        return np.asarray(load_rgb(image))
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UserError(f"an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        return image
    raise UserError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or an array")


class Predictor:
    """Loads a `train_det.py` checkpoint (`model_final.pth`, `model_best.pth`, or a converted one) once and runs
    it on images: `predictor(image)` for one, `predictor.predict([...])` for a batch.

    Each result is `{"boxes": float32 (N, 4) xyxy pixels, "scores": float32 (N,), "labels": int64 (N,) in
    1..K, "names": [class name per box]}`, best first. `score_thresh` drops detections below it (default:
    the model's own test threshold, `roi.score_thresh`; a lower one lowers the model's, for this predictor);
    `"best"` uses each class's threshold of best F1 on the evaluation set, which
    training stores with the model (a class it has none for keeps the model's own); `tile` runs each image as
    `tile` x `tile` tiles (`tile_overlap`, `tile_merge`, `tile_full_image`, `tile_batch` tiles per forward pass;
    `detection.tiling`), with the detections in the image's coordinates; `amp` runs the network in
    bf16/fp16; `compile` puts the convolutions under `torch.compile` (slow first call, see docs/benchmarks.md).
    The network run is an inference copy (frozen BN folded into the convolutions, channels-last): the same
    detections, less time.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device = "auto",
                 score_thresh: float | str | None = None, amp: str = "none", compile: bool = False,
                 tile: int | None = None, tile_overlap: float = 0.2, tile_merge: str = "nms",
                 tile_full_image: bool = False, tile_batch: int = 4) -> None:
        check_amp(amp)
        state = load_checkpoint(checkpoint)
        model, self.config, self.class_names = detector_from_checkpoint(state, checkpoint)
        self.category_ids: list[int] | None = state.get("category_ids")
        self.device = resolve_device(str(device))
        self.model = inference_copy(model.to(self.device), compile=compile)
        self.amp, self.source = amp, Path(checkpoint)
        self.score_thresh = self._thresholds(score_thresh, state.get("score_thresholds"))
        heads = self.model.roi_heads  # the predictor's own copy: a lower threshold than the model's lowers its
        heads.score_thresh = min(heads.score_thresh, float(self.score_thresh[1:].min()))
        self.tiling = None if tile is None else Tiling(tile, tile_overlap, tile_merge, tile_full_image)
        self.tile_batch = tile_batch

    def _thresholds(self, score_thresh: float | str | None, stored: dict[str, float | None] | None) -> np.ndarray:
        """The threshold of each label 1..K (index 0 unused)."""
        own = float(self.model.roi_heads.score_thresh)
        if score_thresh is None:
            return np.full(len(self.class_names) + 1, own)
        if isinstance(score_thresh, str):
            if score_thresh != "best":
                raise UserError(f"score threshold {score_thresh!r}: give a number or 'best'")
            if not stored:
                raise UserError(f"{self.source}: holds no best score thresholds (a training run with an evaluation "
                                "set stores them; eval_det.py --analyze prints them); give a number")
            return np.array([own] + [own if stored.get(name) is None else stored[name] for name in self.class_names])
        return np.full(len(self.class_names) + 1, float(score_thresh))

    def __call__(self, image: ImageInput) -> dict[str, Any]:
        return self.predict([image])[0]

    def predict(self, images: Sequence[ImageInput]) -> list[dict[str, Any]]:
        """Detections of each image, in order; the batch is padded to a common size (as in training)."""
        tensors = [torch.from_numpy(np.array(as_rgb_array(im))).permute(2, 0, 1).float().div_(255) for im in images]
        if not tensors:
            return []
        if self.tiling is None:
            return [self._result(out) for out in self._detect(tensors)]
        heads = self.model.roi_heads
        return [self._result(self.tiling.predict(self._detect, t, self.tile_batch, heads.nms_thresh,
                                                 heads.detections_per_image)) for t in tensors]

    def _detect(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast(self.device, self.amp):
            return self.model([t.to(self.device, non_blocking=True) for t in tensors])

    def _result(self, out: dict[str, torch.Tensor]) -> dict[str, Any]:
        scores = out["scores"].float().cpu().numpy()
        labels = out["labels"].cpu().numpy().astype(np.int64)
        keep = scores >= self.score_thresh[labels]
        labels = labels[keep]
        return {"boxes": out["boxes"].float().cpu().numpy()[keep], "scores": scores[keep], "labels": labels,
                "names": [self.class_names[int(label) - 1] for label in labels]}
