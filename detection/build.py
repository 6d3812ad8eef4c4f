"""`build_detector(cfg, num_classes)`: the only place that turns a detection config into modules.

`DEFAULTS` lists every model key with the Faster R-CNN / paper value; `configs/detection/*.yaml` change
them per experiment (e.g. detectron2's C4 recipe: anchors 32..512, 512 RoIs, RoIAlign 14x14).
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

import backbones
from backbones.features import model_head_prefixes
from backbones.layers import FrozenBatchNorm2d
from backbones.weights import WeightFile, check_options
from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.faster_rcnn import FasterRCNN
from detection.fpn import BackboneWithFPN
from detection.matcher import Matcher
from detection.roi_heads import C4BoxHead, FastRCNNPredictor, FCBoxHead, RoIHeads, RoIPooler
from detection.rpn import RegionProposalNetwork, RPNHead
from detection.transform import DetectionTransform
from detection.weights import detector_num_classes, load_detector_weights
from engine.checkpoint import load_checkpoint
from engine.config import to_dict
from engine.errors import UserError
from engine.logs import get_logger

logger = get_logger("detection")

MODEL_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet101",
    "backbone_options": {},
    "weights": None,  # ImageNet weights: a train_cls.py model_final.pth or a torchvision state dict
    # null here and below: chosen by where training starts (`START_DEFAULTS`, `resolve_start`): from weights, stem
    # and res2 (VGG: conv1, conv2) frozen and frozen BN (the paper's fine-tuning); from scratch, nothing frozen and
    # a norm that trains
    "freeze_at": None,
    "norm": None,  # the backbone's (and C4 head's) normalisation: frozen_bn, bn, syncbn, gn (backbones.NORMS)
    # the input convention (0..255 units): null takes the weights' own (a classifier trained here records
    # its normalisation, MSRA/detectron2 files theirs), else ImageNet's RGB mean/std (IMAGENET_INPUT)
    "pixel_mean": None,
    "pixel_std": None,
    "channel_order": None,
    "pixel_range": 255,  # normalise 0..255 values (detectron2) or, with mean and std / 255, 0..1 ones (torchvision)
    "head": "c4",  # c4: the paper's (res5 per region; vgg*: fc6/fc7 on conv5_3); fpn: a feature pyramid
    "fpn": {"out_channels": 256, "norm": "none"},  # norm after each FPN convolution: none, bn, syncbn, gn
    # None: each BN's own epsilon, PyTorch's batch_norm kernel (fused); torchvision's published FPN file: 0, unfused
    "frozen_bn": {"eps": None, "fused": None},
    "min_size": [600],
    "max_size": 1000,
    "test_min_size": None,
    "resize_rounding": "round",  # round (detectron2) or floor (torchvision) the resized image size
    "size_divisibility": 32,
    "anchor_sizes": [128, 256, 512],  # C4: all at stride 16; FPN: one per level, P2..P6
    "aspect_ratios": [0.5, 1.0, 2.0],
    "round_anchors": None,  # torchvision rounds the anchors' corners to whole pixels (null: by start)
    "anchor_stride_from_image": None,  # torchvision: a level's stride is the padded size // its grid size
    "rpn": {
        "batch_size_per_image": 256, "positive_fraction": 0.5, "iou_thresholds": [0.3, 0.7],
        "pre_nms_topk_train": 12000, "post_nms_topk_train": 2000, "pre_nms_topk_test": 6000,
        "post_nms_topk_test": 300, "nms_thresh": 0.7,
        "min_box_size": 16.0,  # proposals smaller than this at the original image scale are dropped (0: keep all)
        "allowed_border": 0.0,  # RPN trains on anchors inside the image by this margin (-1: on all, detectron2)
        "nms_on_probabilities": False,  # rank proposals by sigmoid(objectness) for NMS, as torchvision
        "smooth_l1_beta": 0.1111, "loss_weight": 1.0,
    },
    "roi": {
        "pooler": "roipool",  # the paper's RoI pooling; roialign (detectron2's recipes, `aligned` = ROIAlignV2)
        "pooler_resolution": None,  # 14 for C4, 7 for VGG
        "sampling_ratio": 0, "aligned": True, "batch_size_per_image": 128, "positive_fraction": 0.25,
        "fg_iou": 0.5, "bg_iou_low": 0.1, "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0], "smooth_l1_beta": 1.0,
        "score_thresh": 0.05, "nms_thresh": 0.3, "detections_per_image": 100, "dropout": 0.5,
        "min_box_size": 0.0,  # detections narrower or lower than this are dropped (torchvision: 0.01; detectron2: 0)
        "fc_dim": 1024, "level_assignment": "detectron2", "canonical_box_size": 224, "canonical_level": 4,  # FPN
        # the FPN box head: `num_conv` 3x3 convolutions of `conv_dim` channels, each followed by `head_norm`, then
        # `num_fc` fully connected layers (detectron2's GroupNorm recipes: 4 convolutions, 1 layer, gn)
        "num_conv": 0, "conv_dim": 256, "num_fc": 2, "head_norm": "none",
        # how the box head's new fully connected layers and the predictor start: detectron2's or torchvision's
        # (null: by start)
        "head_init": None,
    },
}


POSITIVE, NON_NEGATIVE, FRACTION = "(0, inf)", "[0, inf)", "[0, 1]"
# the values each key may take (engine.config.check_limits), checked where a recipe, flag or override sets them
MODEL_LIMITS = {
    "freeze_at": NON_NEGATIVE, "pixel_std": POSITIVE, "min_size": "[1, inf)", "max_size": "[1, inf)",
    "test_min_size": "[1, inf)", "size_divisibility": NON_NEGATIVE, "anchor_sizes": POSITIVE,
    "aspect_ratios": POSITIVE, "rpn.batch_size_per_image": "[1, inf)", "rpn.positive_fraction": FRACTION,
    "rpn.iou_thresholds": FRACTION, "rpn.pre_nms_topk_train": "[1, inf)", "rpn.post_nms_topk_train": "[1, inf)",
    "rpn.pre_nms_topk_test": "[1, inf)", "rpn.post_nms_topk_test": "[1, inf)", "rpn.nms_thresh": FRACTION,
    "rpn.min_box_size": NON_NEGATIVE, "rpn.allowed_border": "[-1, inf)", "rpn.smooth_l1_beta": NON_NEGATIVE,
    "rpn.loss_weight": NON_NEGATIVE, "roi.pooler_resolution": "[1, inf)", "roi.sampling_ratio": NON_NEGATIVE,
    "roi.batch_size_per_image": "[1, inf)", "roi.positive_fraction": FRACTION, "roi.fg_iou": FRACTION,
    "roi.bg_iou_low": FRACTION, "roi.bbox_reg_weights": POSITIVE, "roi.smooth_l1_beta": NON_NEGATIVE,
    "roi.score_thresh": FRACTION, "roi.nms_thresh": FRACTION, "roi.detections_per_image": "[1, inf)",
    "roi.dropout": "[0, 1)", "roi.min_box_size": NON_NEGATIVE, "roi.fc_dim": "[1, inf)",
    "roi.canonical_box_size": POSITIVE, "roi.canonical_level": "[1, inf)", "fpn.out_channels": "[1, inf)",
    "roi.num_conv": NON_NEGATIVE, "roi.conv_dim": "[1, inf)", "roi.num_fc": "[1, inf)",
    "norm": "{frozen_bn, bn, syncbn, gn}", "fpn.norm": "{none, bn, syncbn, gn}",
    "roi.head_norm": "{none, bn, syncbn, gn}",
    "frozen_bn.eps": NON_NEGATIVE, "head": "{c4, fpn}", "channel_order": "{RGB, BGR}",
    "resize_rounding": "{round, floor}", "pixel_range": "{1, 255}", "roi.pooler": "{roialign, roipool}",
    "roi.level_assignment": "{detectron2, torchvision}", "roi.head_init": "{detectron2, torchvision}",
}


def _load_classifier(m: DictConfig | dict, weights: WeightFile | None) -> nn.Module:
    """The registry classifier the detector is cut from, with ImageNet `weights` (a classifier's, or the ResNet
    of a detectron2 detector) when given."""
    options = to_dict(m["backbone_options"])
    classifier = backbones.build_model(m["backbone"], **options)
    if weights is not None:
        if weights.arch and weights.arch != m["backbone"]:
            raise UserError(f"{weights.source}: holds {weights.arch} weights but the detector backbone is "
                            f"{m['backbone']}")
        check_options(weights, options)
        check_input_format(weights.source, weights.input_format, m)
        backbones.load_weights(classifier, weights, arch=m["backbone"], skip_prefixes=model_head_prefixes(classifier))
    return classifier


# The model keys whose default depends on where training starts (`resolve_start`), chosen from the measurements
# in docs/benchmarks.md ("Learning"). From weights: the paper's and both libraries' fine-tuning (frozen BN, stem
# and res2 frozen) with detectron2's anchors and head initialisation, which every pre-trained figure was measured
# with (and what a detector saved before these keys existed was built with). From scratch: every layer trains
# with GroupNorm, with torchvision's rounded anchors and head initialisation, which trained better where the two
# differed (raccoon FPN COCO AP 27.6 against 23.2, one run of three diverging without them) and as well elsewhere.
START_DEFAULTS: dict[str, dict[str, Any]] = {
    "weights": {"norm": "frozen_bn", "freeze_at": 2, "round_anchors": False, "anchor_stride_from_image": False,
                "roi.head_init": "detectron2"},
    "scratch": {"norm": "gn", "freeze_at": 0, "round_anchors": True, "anchor_stride_from_image": True,
                "roi.head_init": "torchvision"},
}


def fill_start_keys(m: DictConfig | dict, start: str, trained: dict[str, Any] | None = None) -> None:
    """Set the `START_DEFAULTS[start]` keys ("weights" or "scratch") left unset (None) in the model config `m`, in
    place: to what the `trained` model config says where it says it, else to the start's default."""
    for dotted, default in START_DEFAULTS[start].items():
        *parents, key = dotted.split(".")
        holder, kept = m, trained or {}
        for parent in parents:
            if type(holder[parent]) is dict:  # written to: a copy, not a section shared with MODEL_DEFAULTS
                holder[parent] = dict(holder[parent])
            holder, kept = holder[parent], kept.get(parent) or {}
        if holder.get(key) is None:
            holder[key] = default if kept.get(key) is None else kept[key]


def resolve_start(cfg: DictConfig | dict, weights: WeightFile | None) -> None:
    """Fill the keys chosen by where training starts (`START_DEFAULTS`) left unset in `cfg.model`, in place; a
    detector of ours keeps the norm, anchors and head initialisation it was built with (what is frozen is this
    run's choice)."""
    trained = None
    if weights is not None and weights.is_our_detector:
        trained = {**weights.record["config"]["model"], "freeze_at": None}
    fill_start_keys(cfg["model"], "weights" if weights is not None else "scratch", trained)


def describe_start(cfg: DictConfig | dict) -> str:
    """One line on how a built detector's training starts: from which weights, what is frozen, which norm."""
    m = cfg["model"]
    frozen = f"the first {m['freeze_at']} stages frozen" if m["freeze_at"] else "every layer trains"
    norm = "" if backbones.model_info(m["backbone"]).family == "vgg" else f", norm {m['norm']}"
    if m["weights"]:
        return f"starting from {m['weights']}: {frozen}{norm}"
    torchvision = m["round_anchors"] and m["roi"]["head_init"] == "torchvision"
    recipe = ", torchvision's anchors and head initialisation" if torchvision else ""
    return (f"no --weights: training from scratch (He-initialised convolutions{recipe}): {frozen}{norm}"
            + (" (a fixed identity: nothing normalises, set model.norm=bn or gn)" if m["norm"] == "frozen_bn" else ""))


IMAGENET_INPUT = {"pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375],
                  "channel_order": "RGB"}


def resolve_input_format(cfg: DictConfig | dict, weights: WeightFile | None) -> None:
    """Fill `model.pixel_mean` / `pixel_std` / `channel_order` left unset (None) with the convention the weights
    were trained on, else ImageNet's, in place; an explicit value the weights contradict is left for
    `check_input_format` to refuse."""
    m = cfg["model"]
    wanted = (weights.input_format if weights is not None else {}) or IMAGENET_INPUT
    for key, default in IMAGENET_INPUT.items():
        if m[key] is None:
            m[key] = list(wanted.get(key, default)) if key != "channel_order" else wanted.get(key, default)


def check_input_format(source: str, wanted: dict[str, Any], m: DictConfig | dict) -> None:
    """Weights trained on another input (BGR, other mean/std) must be fed what they expect: the config must say
    so, or the error names the keys to set."""
    current = to_dict(m)
    if any(current[k] != v for k, v in wanted.items()):
        raise UserError(f"{source}: these weights expect {wanted['channel_order']} input with mean "
                        f"{wanted['pixel_mean']} and std {wanted['pixel_std']}; set "
                        + " ".join(f"model.{k}={v!s}".replace(" ", "") for k, v in wanted.items()))


def build_detector(cfg: DictConfig | dict, num_classes: int, weights: WeightFile | None = None) -> FasterRCNN:
    """Faster R-CNN from `cfg.model` (see `MODEL_DEFAULTS`) for `num_classes` object classes, started from
    `weights` (already read) or the file `cfg.model.weights` names: ImageNet classifier weights for the
    backbone, or a whole detector (ours, or detectron2's C4), whose class-specific predictor is re-initialised
    when it was trained for another number of classes."""
    m = cfg["model"]
    family = backbones.model_info(m["backbone"]).family
    if weights is None and m["weights"]:
        weights = backbones.read_weights(m["weights"])
    resolve_input_format(cfg, weights)
    resolve_start(cfg, weights)
    if weights is not None and "frozen_bn" in weights.record:  # how the file's own library runs its frozen BN
        for key, value in weights.record["frozen_bn"].items():
            if m["frozen_bn"][key] is None:
                m["frozen_bn"][key] = value
    classifier = _load_classifier(m, None if weights is None or weights.is_our_detector else weights)
    rpn_cfg, roi = m["rpn"], m["roi"]
    if family in ("resnet", "plain") and m["head"] == "fpn":
        trunk = backbones.backbone_from_model(classifier, ["res2", "res3", "res4", "res5"], freeze_at=m["freeze_at"],
                                              norm=m["norm"])
        backbone: nn.Module = BackboneWithFPN(trunk, m["fpn"]["out_channels"], m["fpn"]["norm"])
        levels = backbone.output_shape()
        rpn_features, roi_features = list(levels), list(levels)[:4]  # P6 only proposes
        resolution = roi["pooler_resolution"] or 7
        box_head: nn.Module = FCBoxHead.fresh(m["fpn"]["out_channels"], resolution, roi["fc_dim"], roi["num_fc"],
                                              roi["num_conv"], roi["conv_dim"], roi["head_norm"], roi["head_init"])
    elif family in ("resnet", "plain"):
        backbone, res5, head_shape = backbones.split_model(classifier, "res4", freeze_at=m["freeze_at"],
                                                           norm=m["norm"])
        rpn_features = roi_features = ["res4"]
        box_head = C4BoxHead(res5, head_shape.channels)
        resolution = roi["pooler_resolution"] or 14
    elif family == "vgg" and m["head"] == "c4":
        last = classifier.stages()[-1].name
        backbone = backbones.backbone_from_model(classifier, [last], freeze_at=m["freeze_at"])
        rpn_features = roi_features = [last]
        box_head = FCBoxHead([classifier.classifier[0], classifier.classifier[3]], roi["dropout"])
        resolution = roi["pooler_resolution"] or 7
        if resolution != 7:
            raise UserError(f"{m['backbone']}: fc6 takes 7x7 regions; model.roi.pooler_resolution must be 7")
    else:
        raise UserError(f"{m['backbone']} with model.head={m['head']}: detectors are built on ImageNet resnet* or "
                        "plain* backbones (C4 or FPN), or vgg* (conv5_3 with fc6/fc7)")
    shapes = backbone.output_shape()
    anchors = AnchorGenerator(m["anchor_sizes"], m["aspect_ratios"], [shapes[n].stride for n in rpn_features],
                              round_cells=m["round_anchors"], stride_from_image=m["anchor_stride_from_image"])
    rpn = RegionProposalNetwork(
        RPNHead(shapes[rpn_features[0]].channels, anchors.num_anchors), anchors,
        matcher=Matcher(rpn_cfg["iou_thresholds"], (0, -1, 1), allow_low_quality_matches=True),
        batch_size_per_image=rpn_cfg["batch_size_per_image"], positive_fraction=rpn_cfg["positive_fraction"],
        pre_nms_topk=(rpn_cfg["pre_nms_topk_train"], rpn_cfg["pre_nms_topk_test"]),
        post_nms_topk=(rpn_cfg["post_nms_topk_train"], rpn_cfg["post_nms_topk_test"]),
        nms_thresh=rpn_cfg["nms_thresh"], min_box_size=rpn_cfg["min_box_size"],
        allowed_border=rpn_cfg["allowed_border"], nms_on_probabilities=rpn_cfg["nms_on_probabilities"],
        smooth_l1_beta=rpn_cfg["smooth_l1_beta"], loss_weight=rpn_cfg["loss_weight"])
    pooler = RoIPooler(resolution, [1.0 / shapes[n].stride for n in roi_features], roi["pooler"],
                       roi["sampling_ratio"], roi["aligned"], min_level=int(math.log2(shapes[roi_features[0]].stride)),
                       canonical_box_size=roi["canonical_box_size"], canonical_level=roi["canonical_level"],
                       level_rule=roi["level_assignment"])
    roi_heads = RoIHeads(
        pooler, box_head, FastRCNNPredictor(box_head.out_features, num_classes, roi["head_init"]), num_classes,
        matcher=Matcher((roi["bg_iou_low"], roi["fg_iou"]), (-1, 0, 1)),
        box_coder=BoxCoder(roi["bbox_reg_weights"]), batch_size_per_image=roi["batch_size_per_image"],
        positive_fraction=roi["positive_fraction"], smooth_l1_beta=roi["smooth_l1_beta"],
        score_thresh=roi["score_thresh"], nms_thresh=roi["nms_thresh"],
        detections_per_image=roi["detections_per_image"], min_box_size=roi["min_box_size"])
    transform = DetectionTransform(m["min_size"], m["max_size"], m["test_min_size"], m["pixel_mean"], m["pixel_std"],
                                   m["channel_order"], m["size_divisibility"], m["resize_rounding"], m["pixel_range"])
    model = FasterRCNN(backbone, rpn, roi_heads, transform, rpn_features, roi_features)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = module.eps if m["frozen_bn"]["eps"] is None else float(m["frozen_bn"]["eps"])
            module.fused = module.fused if m["frozen_bn"]["fused"] is None else bool(m["frozen_bn"]["fused"])
    if weights is not None and (weights.is_our_detector or weights.extra):
        load_detector_weights(model, weights, m)
    return model


def detector_checkpoint(model: nn.Module, cfg: DictConfig | dict, class_names: list[str],
                        category_ids: list[int] | None = None,
                        score_thresholds: dict[str, float | None] | None = None) -> dict[str, Any]:
    """What `load_detector` reads back: the config that builds the model, class names (and the dataset's
    category id of each, for COCO-format results files), weights, and the per-class score threshold of best F1
    on the evaluation set where training measured one (`Predictor(score_thresh="best")`)."""
    state = {"kind": "faster_rcnn", "config": to_dict(cfg), "class_names": list(class_names),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if category_ids is not None:
        state["category_ids"] = [int(c) for c in category_ids]
    if score_thresholds is not None:
        state["score_thresholds"] = {name: None if t is None else float(t) for name, t in score_thresholds.items()}
    return state


def load_detector(path: str | os.PathLike) -> tuple[FasterRCNN, dict[str, Any], list[str]]:
    """A detector from `detector_checkpoint` output or a training checkpoint of `train_det.py`."""
    return detector_from_checkpoint(load_checkpoint(path), path)


def detector_from_checkpoint(state: dict[str, Any], path: str | os.PathLike
                             ) -> tuple[FasterRCNN, dict[str, Any], list[str]]:
    """`load_detector` on a checkpoint already loaded from `path` (named in errors)."""
    if state.get("kind") != "faster_rcnn" or "config" not in state:
        what = f"a {state['arch']} classifier checkpoint" if "arch" in state else "not a detector checkpoint"
        raise UserError(f"{path}: {what} (expected model_final.pth or a checkpoint of train_det.py)")
    cfg = state["config"]
    # keys added since the detector was saved take their defaults, which build what it had; those chosen by start
    # were, before they were keys, what a start from weights chooses now
    cfg["model"] = OmegaConf.to_container(OmegaConf.merge(MODEL_DEFAULTS, {**cfg["model"], "weights": None}))
    fill_start_keys(cfg["model"], "weights")
    model = build_detector(cfg, len(state["class_names"]))
    weights = state.get("state_dict", state.get("model"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit the detector its config describes "
                        f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                        f"e.g. {unexpected[:2]})")
    return model, cfg, state["class_names"]


def import_detector(weights: str | WeightFile, cfg: DictConfig | dict[str, Any],
                    class_names: list[str] | None = None) -> tuple[FasterRCNN, dict[str, Any]]:
    """Our Faster R-CNN with the weights of a detectron2 (C4, FPN) or torchvision (`fasterrcnn_resnet50_fpn`)
    detector (a `.pkl` / `.pth` path, or the file already read), and the detector checkpoint
    (`detection.build.detector_checkpoint`) that `eval_det.py` / `predict.py` read.

    `cfg` must describe that library's model (`configs/detection/detectron2_R50_C4.yaml`,
    `detectron2_R50_FPN.yaml`, `torchvision_R50_FPN.yaml`); `class_names` default to COCO's 80 or VOC's 20 when
    the file has that many classes, and to torchvision's 90 COCO labels (category ids, gaps named "N/A").
    """
    if not isinstance(weights, WeightFile):
        weights = backbones.read_weights(weights)
    if not weights.extra:
        raise UserError(f"{weights.source}: a backbone's weights, not a trained detector")
    num_classes = detector_num_classes(weights)
    category_ids = None
    if class_names is None:
        class_names, category_ids = default_class_names(num_classes, weights)
        which = {80: "COCO's 80", 20: "PASCAL VOC's 20", 90: "torchvision's 90 COCO labels"}[num_classes]
        logger.info(f"{weights.source}: {num_classes} classes, named as {which} by their count; give --class-names "
                    "if the detector was trained on others")
    if len(class_names) != num_classes:
        raise UserError(f"{weights.source}: the detector has {num_classes} classes but {len(class_names)} names "
                        "were given")
    cfg = to_dict(cfg)
    cfg["model"]["weights"] = None  # the checkpoint carries every weight itself
    model = build_detector(cfg, num_classes, weights)
    return model.eval(), detector_checkpoint(model, cfg, class_names, category_ids)


def default_class_names(num_classes: int, weights: WeightFile) -> tuple[list[str], list[int] | None]:
    """The class names a detector of `num_classes` classes was most likely trained for, and their COCO category
    ids where the labels are those ids (torchvision's 90)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    from detection.data.coco import COCO_CLASSES
    from detection.data.voc import VOC_CLASSES

    torchvision_coco = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:]  # labels 1..90, "N/A" gaps
    if weights.format == "torchvision" and num_classes == len(torchvision_coco):
        return list(torchvision_coco), list(range(1, num_classes + 1))
    for names in (COCO_CLASSES, VOC_CLASSES):
        if len(names) == num_classes:
            return list(names), None
    raise UserError(f"{weights.source}: {num_classes} classes (neither COCO's 80 nor VOC's 20); give their names "
                    "(--class-names a,b,c or a file with one name per line)")
