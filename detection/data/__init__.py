"""Detection datasets. Every dataset returns `(image, target)`: a float 0..1 tensor (3, H, W) and
`{"boxes": float xyxy (N, 4) in pixels, "labels": int64 1..K, "image_id": int}` (0 is background), and
exposes `class_names`, `image_info(i)` and `ground_truth()` for the evaluators."""

from detection.data.coco import CocoDetection
from detection.data.common import GroundTruth, collate_detection
from detection.data.voc import VOC_CLASSES, VOCDetection, voc_image_sets

__all__ = ["VOC_CLASSES", "CocoDetection", "GroundTruth", "VOCDetection", "collate_detection", "voc_image_sets"]
