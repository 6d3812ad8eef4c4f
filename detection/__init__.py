"""Faster R-CNN detection: datasets (COCO, PASCAL VOC, synthetic shapes), augmentation, evaluation."""
