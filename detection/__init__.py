"""Faster R-CNN detection: datasets (COCO, PASCAL VOC, synthetic shapes), augmentation, the model
(anchors, RPN, RoI heads for ResNet C4 and VGG-16), evaluation (COCO and VOC AP).

    from detection.build import MODEL_DEFAULTS, build_detector
    model = build_detector({"model": MODEL_DEFAULTS}, num_classes=20)
"""
