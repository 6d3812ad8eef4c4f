"""Training augmentation through albumentations: horizontal flip, optional photometric jitter.

Resizing to the recipe's shorter side happens in the model's input transform (as in torchvision's
GeneralizedRCNNTransform), so predictions come back in original image coordinates. The random stream of
albumentations is re-seeded from torch's generator at every call, which `engine.sampler.SeededDataset`
seeds per sample: augmentation is reproducible across workers and resumes.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch

from detection.data.common import to_tensors


class DetectionAugmentation:
    """`(uint8 HWC image, target) -> (float CHW tensor, target)` with boxes moved along with the pixels."""

    def __init__(self, flip_prob: float = 0.5, photometric: bool = False) -> None:
        ops: list[A.BasicTransform] = [A.HorizontalFlip(p=flip_prob)]
        if photometric:
            ops += [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
                    A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5)]
        self.compose = A.Compose(ops, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                                               clip=True, min_area=0.0))

    def __call__(self, image: np.ndarray, target: dict[str, Any]):
        self.compose.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        out = self.compose(image=image, bboxes=np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4),
                           labels=np.asarray(target["labels"], dtype=np.int64))
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return to_tensors(out["image"], {**target, "boxes": boxes, "labels": np.asarray(out["labels"])})
