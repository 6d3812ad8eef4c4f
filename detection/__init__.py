"""Faster R-CNN detection: datasets (COCO, PASCAL VOC, YOLO, LabelMe, synthetic shapes), augmentation, the model
(anchors, RPN, RoI heads for ResNet C4, ResNet-FPN and VGG-16), tiling for large images, evaluation (COCO and VOC
AP) and error analysis (TIDE, confusion, thresholds).

    from detection.build import MODEL_DEFAULTS, build_detector
    model = build_detector({"model": {**MODEL_DEFAULTS, "backbone": "resnet50"}}, num_classes=20)
"""
