"""Whole detectors' state dicts in our keys: ours (fine-tuning), detectron2's Faster R-CNN (C4, FPN) and
torchvision's (`fasterrcnn_resnet50_fpn`). Building a detector from such a file is `detection.build`'s
(`import_detector`); this module only maps and loads weights.

`backbones.read_weights` already turns a detectron2 file into our ResNet keys (`backbone.*` and
`roi_heads.res5.*`) and keeps its RPN and box predictor aside (`WeightFile.extra`); `build_detector` loads
the ResNet part like any ImageNet weights, and `load_detector_weights` maps the rest. The two layouts
differ in one place: detectron2's classifier puts background last (index K), ours first (index 0).
Our own `model_final.pth` / `model_best.pth` start a fine-tuning run the same way (`train_det.py --weights`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from backbones.weights import WeightFile
from detection.faster_rcnn import FasterRCNN
from engine.config import to_dict
from engine.errors import UserError
from engine.logs import get_logger

logger = get_logger("detection")

PREDICTOR_PREFIX, PREDICTOR = "roi_heads.box_predictor.", "roi_heads.predictor."  # theirs, ours
RPN_OURS = "rpn.head."
# detectron2 and torchvision names of the parts besides the ResNet -> ours (regular expressions)
DETECTRON2_NAMES = ((r"proposal_generator\.rpn_head\.", RPN_OURS),
                    (r"backbone\.fpn_lateral(\d)\.", lambda m: f"backbone.fpn.lateral_convs.{int(m[1]) - 2}."),
                    (r"backbone\.fpn_output(\d)\.", lambda m: f"backbone.fpn.output_convs.{int(m[1]) - 2}."),
                    (r"roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
                    (r"roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."))
TORCHVISION_NAMES = ((r"backbone\.fpn\.inner_blocks\.(\d)\.(0\.)?", r"backbone.fpn.lateral_convs.\1."),
                     (r"backbone\.fpn\.layer_blocks\.(\d)\.(0\.)?", r"backbone.fpn.output_convs.\1."),
                     (r"rpn\.head\.conv\.(0\.0\.)?", "rpn.head.conv."),
                     (r"rpn\.head\.cls_logits\.", "rpn.head.objectness_logits."),
                     (r"rpn\.head\.bbox_pred\.", "rpn.head.anchor_deltas."),
                     (r"roi_heads\.box_head\.", "roi_heads.box_head."))


def _renamed(key: str, names) -> str | None:
    for pattern, replacement in names:
        renamed, count = re.subn(f"^{pattern}", replacement, key)
        if count:
            return renamed
    return None


def detector_num_classes(weights: WeightFile) -> int:
    """K, the number of object classes, from the classifier's K+1 outputs (detectron2's and torchvision's)."""
    key = PREDICTOR_PREFIX + "cls_score.weight"
    if key not in weights.extra:
        raise UserError(f"{weights.source}: no {key} (a backbone, not a trained detector)")
    return weights.extra[key].shape[0] - 1


def heads_state_dict(weights: WeightFile) -> dict[str, torch.Tensor]:
    """Everything of a detectron2 or torchvision Faster R-CNN besides its ResNet, in our detector's keys: FPN,
    RPN, box head and predictor. The class scores keep background first (detectron2 puts it last); the box
    regressor has 4 rows per object class (detectron2's class-agnostic one is repeated, which predicts the same
    boxes; torchvision's rows for the background class are dropped)."""
    num_classes = detector_num_classes(weights)
    names = DETECTRON2_NAMES if weights.format == "detectron2" else TORCHVISION_NAMES
    state = {}
    for key, value in weights.extra.items():
        if key.startswith(PREDICTOR_PREFIX + "cls_score."):
            if weights.format == "detectron2":
                value = torch.cat([value[-1:], value[:-1]])
            state[PREDICTOR + key.removeprefix(PREDICTOR_PREFIX)] = value
        elif key.startswith(PREDICTOR_PREFIX + "bbox_pred."):
            if value.shape[0] == 4:
                value = value.repeat(num_classes, *([1] * (value.dim() - 1)))
            elif value.shape[0] == 4 * (num_classes + 1) and weights.format != "detectron2":
                value = value[4:]
            if value.shape[0] != 4 * num_classes:
                raise UserError(f"{weights.source}: {key} has {value.shape[0]} rows; expected 4 per class "
                                f"({4 * num_classes}) or 4 (class-agnostic)")
            state[PREDICTOR + key.removeprefix(PREDICTOR_PREFIX)] = value
        elif (ours := _renamed(key, names)) is not None:
            state[ours] = value
        else:
            raise UserError(f"{weights.source}: unexpected detector key {key!r}")
    return state


# what must agree between a detector checkpoint and the config it fine-tunes under: the network's layout and
# the input it was trained on (weights fed other pixels load without complaint and silently do worse)
ARCHITECTURE_KEYS = ("backbone", "backbone_options", "pixel_mean", "pixel_std", "channel_order")


def load_detector_weights(model: FasterRCNN, weights: WeightFile, model_cfg: Any) -> None:
    """Load a whole detector into `model` (built from `model_cfg`, the config's `model` section): one of ours
    (`weights.is_our_detector`) or the heads (FPN, RPN, box head and predictor) of a detectron2 or torchvision
    file (its ResNet is already in).
    When the file was trained for another number of classes, the class-specific predictor keeps its fresh
    initialisation (fine-tuning to new classes) and one line says so; any other difference is an error."""
    if weights.is_our_detector:
        trained = weights.record["config"]["model"]
        current = to_dict(model_cfg)
        differ = [k for k in ARCHITECTURE_KEYS if trained.get(k) != current.get(k)]
        if differ:
            raise UserError(f"{weights.source}: this detector was trained with "
                            + ", ".join(f"model.{k}={trained.get(k)}" for k in differ)
                            + "; the config has " + ", ".join(f"{current.get(k)}" for k in differ)
                            + ": set the same values (or use its recipe)")
        state, scope = weights.state_dict, ("",)
    else:
        state = heads_state_dict(weights)
        scope = tuple({".".join(k.split(".")[:2]) + "." for k in state})  # the parts the file brings
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(scope)}
    # BN that trained in the file and is frozen here (stages frozen for fine-tuning) brings a counter frozen BN has not
    state = {k: v for k, v in state.items() if k in expected or not k.endswith(".num_batches_tracked")}
    file_classes = state.get(PREDICTOR + "cls_score.weight")
    model_classes = expected[PREDICTOR + "cls_score.weight"]
    if file_classes is not None and file_classes.shape != model_classes.shape:
        state = {k: v for k, v in state.items() if not k.startswith(PREDICTOR)}
        expected = {k: v for k, v in expected.items() if not k.startswith(PREDICTOR)}
        logger.info(f"{weights.source}: trained for {file_classes.shape[0] - 1} classes, fine-tuned here for "
                    f"{model_classes.shape[0] - 1}: the class-specific predictor ({PREDICTOR.rstrip('.')}) starts "
                    "from a new initialisation")
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        hint = ""
        if any(k.startswith(RPN_OURS + "objectness") for k in wrong):
            hint = (f"; the file has {state[RPN_OURS + 'objectness_logits.bias'].shape[0]} anchors per position, the "
                    f"config {expected[RPN_OURS + 'objectness_logits.bias'].shape[0]}: set model.anchor_sizes / "
                    "model.aspect_ratios as the file's model had them")
        raise UserError(f"{weights.source}: the detector in this file does not fit the configured one (missing: "
                        f"{missing[:3] or 'none'}; unexpected: {unexpected[:3] or 'none'}; file vs model: "
                        f"{wrong[:3] or 'none'}){hint}")
    model.load_state_dict(state, strict=False)
