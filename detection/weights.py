"""Trained detectors from elsewhere: detectron2 Faster R-CNN C4 checkpoints into our `FasterRCNN`.

`backbones.read_weights` already turns a detectron2 file into our ResNet keys (`backbone.*` and
`roi_heads.res5.*`) and keeps its RPN and box predictor aside (`WeightFile.extra`); `build_detector` loads
the ResNet part like any ImageNet weights, and `load_detectron2_heads` maps the rest. The two layouts
differ in one place: detectron2's classifier puts background last (index K), ours first (index 0).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

import backbones
from backbones.weights import WeightFile
from detection.build import build_detector, detector_checkpoint
from detection.faster_rcnn import FasterRCNN
from engine.config import to_dict
from engine.errors import UserError

RPN_PREFIX, PREDICTOR_PREFIX = "proposal_generator.rpn_head.", "roi_heads.box_predictor."


def detectron2_num_classes(weights: WeightFile) -> int:
    """K, the number of object classes, from the detectron2 classifier's K+1 outputs."""
    key = PREDICTOR_PREFIX + "cls_score.weight"
    if key not in weights.extra:
        raise UserError(f"{weights.source}: no {key} (a detectron2 backbone, not a trained detector)")
    return weights.extra[key].shape[0] - 1


def detectron2_heads_state_dict(weights: WeightFile) -> dict[str, torch.Tensor]:
    """The RPN and box predictor of a detectron2 file in our detector's keys (background moved first; a
    class-agnostic box regressor repeated for every class, which predicts the same boxes)."""
    num_classes = detectron2_num_classes(weights)
    state = {}
    for key, value in weights.extra.items():
        if key.startswith(RPN_PREFIX):
            state["rpn.head." + key.removeprefix(RPN_PREFIX)] = value
        elif key.startswith(PREDICTOR_PREFIX + "cls_score."):
            state["roi_heads.predictor." + key.removeprefix(PREDICTOR_PREFIX)] = torch.cat([value[-1:], value[:-1]])
        elif key.startswith(PREDICTOR_PREFIX + "bbox_pred."):
            if value.shape[0] == 4:
                value = value.repeat(num_classes, *([1] * (value.dim() - 1)))
            if value.shape[0] != 4 * num_classes:
                raise UserError(f"{weights.source}: {key} has {value.shape[0]} rows; expected 4 per class "
                                f"({4 * num_classes}) or 4 (class-agnostic)")
            state["roi_heads.predictor." + key.removeprefix(PREDICTOR_PREFIX)] = value
        else:
            raise UserError(f"{weights.source}: unexpected detector key {key!r}")
    return state


def load_detectron2_heads(model: FasterRCNN, weights: WeightFile) -> None:
    """Load the RPN and box predictor of a detectron2 file into `model` (whose ResNet is already loaded)."""
    heads = detectron2_heads_state_dict(weights)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(("rpn.head.", "roi_heads.predictor."))}
    missing = sorted(expected.keys() - heads.keys())
    wrong = [f"{k} {tuple(heads[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in heads and heads[k].shape != v.shape]
    if missing or wrong:
        hint = ""
        if any(k.startswith("rpn.head.objectness") for k in wrong):
            hint = (f"; the file has {heads['rpn.head.objectness_logits.bias'].shape[0]} anchors per position, the "
                    f"config {expected['rpn.head.objectness_logits.bias'].shape[0]}: set model.anchor_sizes / "
                    "model.aspect_ratios as the detectron2 config did")
        raise UserError(f"{weights.source}: detectron2 heads do not fit this detector (missing: {missing or 'none'}; "
                        f"file vs model: {wrong or 'none'}){hint}")
    model.load_state_dict(heads, strict=False)


def import_detectron2(weights: str | WeightFile, cfg: DictConfig | dict[str, Any],
                      class_names: list[str] | None = None) -> tuple[FasterRCNN, dict[str, Any]]:
    """Our Faster R-CNN with the weights of a detectron2 C4 checkpoint (a `.pkl` / `.pth` path, or the file
    already read), and the detector checkpoint (`detection.build.detector_checkpoint`) that `eval_det.py` /
    `predict.py` read.

    `cfg` must describe detectron2's model (`configs/detection/detectron2_R50_C4.yaml`); `class_names`
    default to COCO's 80 or VOC's 20 when the file has that many classes.
    """
    if not isinstance(weights, WeightFile):
        weights = backbones.read_weights(weights, expect="detectron2")
    num_classes = detectron2_num_classes(weights)
    if class_names is None:
        class_names = default_class_names(num_classes, weights.source)
    if len(class_names) != num_classes:
        raise UserError(f"{weights.source}: the detector has {num_classes} classes but {len(class_names)} names "
                        "were given")
    cfg = to_dict(cfg)
    cfg["model"]["weights"] = None  # the checkpoint carries every weight itself
    model = build_detector(cfg, num_classes, weights)
    load_detectron2_heads(model, weights)
    return model.eval(), detector_checkpoint(model, cfg, class_names)


def default_class_names(num_classes: int, source: str) -> list[str]:
    from detection.data.coco import COCO_CLASSES
    from detection.data.voc import VOC_CLASSES

    for names in (COCO_CLASSES, VOC_CLASSES):
        if len(names) == num_classes:
            return list(names)
    raise UserError(f"{source}: {num_classes} classes (neither COCO's 80 nor VOC's 20); give their names "
                    "(--class-names a,b,c or a file with one name per line)")
