"""Training side by side: our Faster R-CNN against torchvision's and detectron2's, given identical work.

Every side trains on the same stream of batches (the same images, pre-resized once to one shorter side, the same
horizontal flips, in the same order), from the same backbone network with the same initial weights (a
registry ResNet: from scratch with BatchNorm that trains and nothing frozen, as torchvision without weights;
or from a classifier's weights, `--weights`, with frozen BN and the stem and res2 frozen, as both libraries
fine-tune), with the same anchor sizes and ratios, RPN and RoI sample counts, IoU thresholds, proposal counts, RoIAlign,
smooth-L1 betas, and the same SGD, learning-rate schedule and iterations. What differs is each library's own
code for everything after the backbone network: FPN, RPN, sampling, matching, losses, heads and their
initialisation. Ours makes the choices our library makes for the start (`detection.build.START_DEFAULTS`: from
scratch torchvision's rounded anchors and head initialisation, from weights detectron2's). Each side's
detections are scored by one evaluator (pycocotools COCO AP and AP50).

Sides: `ours-fpn`, `torchvision-fpn` (`torchvision.models.detection.FasterRCNN` on its own BackboneWithFPN),
`detectron2-fpn` (its FPN, RPN and StandardROIHeads), `ours-c4`, `detectron2-c4` (its RPN and Res5ROIHeads
with our res5). detectron2 runs from its source (no build; `PYTHONPATH=<detectron2>:<fvcore, iopath, yacs,
...>`), as benchmarks.bench_vs_detectron2. Each run appends one json line to `--results`; `--report` turns a
results file into the table of mean and spread over seeds; `--step-times N` first times N training steps of each
side on the same batches, interleaved (the ratio of each peer's time to ours); `--loss-parity` first checks one
training step of ours against torchvision's (FPN) and detectron2's (C4, FPN); `--ours-set KEY=VALUE ...` trains
our sides with overrides of their model config (torchvision's recipe choices, say) as sides of their own:

    python -m benchmarks.bench_learning --dataset voc --data ../shared/data/raccoon --classes raccoon \
        --train-split train.txt --val-split test.txt --sides ours-fpn torchvision-fpn --seeds 0 1 2 \
        --results runs/learning.jsonl
    python -m benchmarks.bench_learning --report runs/learning.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones.layers import convert_norm
from backbones.weights import WeightFile
from benchmarks.common import interleaved_times, machine_line, relative_difference
from detection.build import START_DEFAULTS, build_detector
from detection.data.catalog import DATA_FLAG_KEYS, add_data_arguments, build_detection_dataset
from detection.data.common import DetectionDataset, load_image
from detection.inference import score
from detection.train import DEFAULTS, LIMITS, OPEN_KEYS
from detection.weights import heads_state_dict
from engine.config import load_config
from engine.errors import UserError
from engine.schedule import LRSchedule

SIDES = ("ours-fpn", "torchvision-fpn", "detectron2-fpn", "ours-c4", "detectron2-c4")
MEAN = [123.675, 116.28, 103.53]  # ImageNet RGB mean and std, 0..255 units, for every side
STD = [58.395, 57.12, 57.375]


@dataclass
class Work:
    """What every side is given, identically."""

    backbone: str = "resnet18"
    width: int = 32  # the ResNet's first-stage width (64: the paper's); half width keeps CPU runs short
    min_size: int = 256  # every image is resized once to this shorter side (no other resizing anywhere)
    fpn_channels: int = 64
    fc_dim: int = 256  # the FPN box head's two fully connected layers
    fpn_anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one per level P2..P6
    c4_anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # all on res4
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_batch: int = 256
    rpn_pre_nms_train: int = 1000  # per level
    rpn_post_nms_train: int = 300  # per image
    rpn_pre_nms_test: int = 500
    rpn_post_nms_test: int = 100
    roi_batch: int = 64
    roi_fg_fraction: float = 0.25
    smooth_l1_beta: float = 1 / 9  # torchvision's (fixed there), given to the others
    ims_per_batch: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    iterations: int = 600
    warmup_iters: int = 100
    steps: list[int] = field(default_factory=lambda: [480])
    flip_prob: float = 0.5


# ----- the shared data stream ------------------------------------------------------------------------------------
class ResizedSet:
    """A dataset's images resized once to a shorter side (bilinear), kept in memory, with boxes scaled alike."""

    def __init__(self, dataset: DetectionDataset, min_size: int) -> None:
        self.dataset, self.images, self.targets, self.scales = dataset, [], [], []
        for i, rec in enumerate(dataset.records):
            image = torch.from_numpy(load_image(dataset.image_path(i))).permute(2, 0, 1).float().div_(255)
            scale = min_size / min(rec.height, rec.width)
            size = (round(rec.height * scale), round(rec.width * scale))
            self.images.append(F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0])
            keep = ~rec.ignore
            boxes = torch.as_tensor(rec.boxes[keep], dtype=torch.float32) * torch.tensor(
                [size[1] / rec.width, size[0] / rec.height] * 2)
            self.targets.append({"boxes": boxes, "labels": torch.as_tensor(rec.labels[keep], dtype=torch.int64)})
            self.scales.append((rec.width / size[1], rec.height / size[0]))

    def batches(self, work: Work, seed: int) -> list[list[tuple[torch.Tensor, dict[str, torch.Tensor]]]]:
        """Every iteration's batch: images in a seeded order (epoch by epoch), each flipped with `flip_prob`."""
        g = torch.Generator().manual_seed(seed)
        order: list[int] = []
        while len(order) < work.iterations * work.ims_per_batch:
            order += torch.randperm(len(self.images), generator=g).tolist()
        flips = (torch.rand(len(order), generator=g) < work.flip_prob).tolist()
        out = []
        for it in range(work.iterations):
            batch = []
            for k in range(it * work.ims_per_batch, (it + 1) * work.ims_per_batch):
                image, target = self.images[order[k]], self.targets[order[k]]
                if flips[k]:
                    width = image.shape[-1]
                    boxes = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor(
                        [width, 0.0, width, 0])
                    image, target = image.flip(-1), {**target, "boxes": boxes}
                batch.append((image, target))
            out.append(batch)
        return out


# ----- the sides -------------------------------------------------------------------------------------------------
def initial_classifier(work: Work, seed: int, weights: str | None) -> nn.Module:
    """The backbone network every side starts from: seeded He initialisation, or the classifier in `weights`."""
    torch.manual_seed(seed)
    model = backbones.build_model(work.backbone, width=work.width)
    if weights:
        backbones.load_weights(model, backbones.read_weights(weights), arch=work.backbone, skip_prefixes=("fc.",))
    return model


def start_settings(pretrained: bool) -> tuple[str, int]:
    """(norm, freeze_at): frozen BN and stem + res2 frozen from weights; trainable BN, nothing frozen from scratch."""
    return ("frozen_bn", 2) if pretrained else ("bn", 0)


def our_config(work: Work, head: str, pretrained: bool, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Our detector on `work`: what our library chooses for the start (`START_DEFAULTS`: anchors, head
    initialisation) except the norm and frozen stages, which are the work's (`start_settings`), then `extra`."""
    norm, freeze_at = start_settings(pretrained)
    fpn = head == "fpn"
    by_start = START_DEFAULTS["weights" if pretrained else "scratch"]
    overrides = [
        *(f"model.{key}={str(value).lower()}" for key, value in by_start.items() if key not in ("norm", "freeze_at")),
        f"model.backbone={work.backbone}", f"model.backbone_options={{width: {work.width}}}", f"model.head={head}",
        f"model.norm={norm}", f"model.freeze_at={freeze_at}", f"model.min_size=[{work.min_size}]",
        f"model.max_size={work.min_size * 4}", "model.size_divisibility=32", "model.pixel_range=1",
        f"model.pixel_mean={MEAN}", f"model.pixel_std={STD}",
        f"model.anchor_sizes={work.fpn_anchor_sizes if fpn else work.c4_anchor_sizes}",
        f"model.aspect_ratios={work.aspect_ratios}", f"model.fpn.out_channels={work.fpn_channels}",
        f"model.rpn.batch_size_per_image={work.rpn_batch}", f"model.rpn.pre_nms_topk_train={work.rpn_pre_nms_train}",
        f"model.rpn.post_nms_topk_train={work.rpn_post_nms_train}",
        f"model.rpn.pre_nms_topk_test={work.rpn_pre_nms_test}",
        f"model.rpn.post_nms_topk_test={work.rpn_post_nms_test}", "model.rpn.min_box_size=0",
        "model.rpn.allowed_border=-1", f"model.rpn.smooth_l1_beta={work.smooth_l1_beta}",
        "model.roi.pooler=roialign", "model.roi.pooler_resolution=7", "model.roi.sampling_ratio=0",
        "model.roi.aligned=false", f"model.roi.batch_size_per_image={work.roi_batch}",
        f"model.roi.positive_fraction={work.roi_fg_fraction}", "model.roi.bg_iou_low=0",
        f"model.roi.smooth_l1_beta={work.smooth_l1_beta}", "model.roi.nms_thresh=0.5",
        f"model.roi.fc_dim={work.fc_dim}", *(f"model.{item}" for item in extra)]
    return load_config(DEFAULTS, None, overrides, open_keys=OPEN_KEYS, limits=LIMITS)


class Side:
    """One library's detector behind a common face: `losses(batch)`, `detect(images)` in the images' pixels."""

    model: nn.Module

    def losses(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError


class OursSide(Side):
    def __init__(self, work: Work, head: str, classifier: nn.Module, num_classes: int, pretrained: bool,
                 extra: tuple[str, ...] = ()) -> None:
        cfg = our_config(work, head, pretrained, extra)
        self.model = build_detector(cfg, num_classes)
        self.trunk = self.model.backbone.trunk if head == "fpn" else self.model.backbone  # the registry network's part
        source = backbones.backbone_from_model(copy.deepcopy(classifier), list(self.trunk.out_features),
                                               freeze_at=cfg.model.freeze_at, norm=cfg.model.norm)
        self.trunk.load_state_dict(source.state_dict())
        if head == "c4":
            self.model.roi_heads.box_head.res5.load_state_dict(
                convert_norm(copy.deepcopy(classifier.layer4), cfg.model.norm).state_dict())

    def losses(self, batch):
        return self.model([im for im, _ in batch], [t for _, t in batch])

    def detect(self, images):
        return self.model(images)


class TorchvisionSide(Side):
    """`torchvision.models.detection.FasterRCNN` with its own BackboneWithFPN (FPN, LastLevelMaxPool) on the
    registry ResNet (torchvision's module names), its RPN, RoI heads (MultiScaleRoIAlign, TwoMLPHead) and
    losses; its transform's resize is a no-op on the pre-resized images (scale 1)."""

    def __init__(self, work: Work, classifier: nn.Module, num_classes: int, pretrained: bool) -> None:
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.backbone_utils import BackboneWithFPN
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.ops import MultiScaleRoIAlign
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        norm, freeze_at = start_settings(pretrained)
        resnet = convert_norm(copy.deepcopy(classifier), norm)
        for module in [resnet.conv1, resnet.bn1, resnet.layer1][: 3 if freeze_at >= 2 else 0]:
            module.requires_grad_(False)
        channels = [getattr(resnet, f"layer{i}")[-1].last_bn.num_features for i in range(1, 5)]
        body = BackboneWithFPN(resnet, {f"layer{i}": str(i - 1) for i in range(1, 5)}, channels, work.fpn_channels,
                               extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(tuple((s,) for s in work.fpn_anchor_sizes),
                                  (tuple(work.aspect_ratios),) * len(work.fpn_anchor_sizes))
        pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0)
        self.model = FasterRCNN(
            body, min_size=work.min_size, max_size=work.min_size * 4, image_mean=[m / 255 for m in MEAN],
            image_std=[s / 255 for s in STD], rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=work.rpn_pre_nms_train, rpn_post_nms_top_n_train=work.rpn_post_nms_train,
            rpn_pre_nms_top_n_test=work.rpn_pre_nms_test, rpn_post_nms_top_n_test=work.rpn_post_nms_test,
            rpn_batch_size_per_image=work.rpn_batch, box_roi_pool=pooler,
            box_head=TwoMLPHead(work.fpn_channels * 49, work.fc_dim),
            box_predictor=FastRCNNPredictor(work.fc_dim, num_classes + 1), box_batch_size_per_image=work.roi_batch,
            box_positive_fraction=work.roi_fg_fraction, box_nms_thresh=0.5)

    def losses(self, batch):
        return self.model([im for im, _ in batch], [t for _, t in batch])

    def detect(self, images):
        return self.model(images)


def _d2_cfg(work: Work, head: str, num_classes: int, res5_channels: int):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    fpn = head == "fpn"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[s] for s in work.fpn_anchor_sizes] if fpn else [work.c4_anchor_sizes]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [work.aspect_ratios]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"] if fpn else ["res4"]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = work.rpn_batch
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = work.rpn_pre_nms_train
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = work.rpn_post_nms_train
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = work.rpn_pre_nms_test, work.rpn_post_nms_test
    cfg.MODEL.RPN.SMOOTH_L1_BETA = work.smooth_l1_beta
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads" if fpn else "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"] if fpn else ["res4"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = work.roi_batch
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = work.roi_fg_fraction
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead" if fpn else ""
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = (2, work.fc_dim) if fpn else (0, 1024)
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlign"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = work.smooth_l1_beta
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res5_channels // 8  # detectron2 sizes the C4 predictor as 8x res2
    return cfg


class Detectron2Side(Side):
    """detectron2's `GeneralizedRCNN` assembled from its own parts (FPN with LastLevelMaxPool, RPN, StandardROIHeads
    or Res5ROIHeads) on our ResNet trunk (and res5 for C4) wrapped as a detectron2 backbone; the images are given
    in 0..255 RGB and normalised by its own preprocessing."""

    def __init__(self, work: Work, head: str, classifier: nn.Module, num_classes: int, pretrained: bool) -> None:
        from detectron2.layers import ShapeSpec as D2ShapeSpec
        from detectron2.modeling import Backbone as D2Backbone
        from detectron2.modeling import GeneralizedRCNN, build_proposal_generator
        from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
        from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads

        class Trunk(D2Backbone):
            def __init__(self, trunk: nn.Module) -> None:
                super().__init__()
                self.trunk = trunk

            def forward(self, x):
                return self.trunk(x)

            def output_shape(self):
                return {k: D2ShapeSpec(channels=s.channels, stride=s.stride)
                        for k, s in self.trunk.output_shape().items()}

            @property
            def size_divisibility(self) -> int:
                return 32  # what the other sides pad to

        norm, freeze_at = start_settings(pretrained)
        cfg = _d2_cfg(work, head, num_classes, classifier.layer4[-1].last_bn.num_features)
        features = ["res2", "res3", "res4", "res5"] if head == "fpn" else ["res4"]
        trunk = Trunk(backbones.backbone_from_model(copy.deepcopy(classifier), features, freeze_at=freeze_at,
                                                    norm=norm))
        if head == "fpn":
            backbone = FPN(trunk, features, work.fpn_channels, top_block=LastLevelMaxPool())
            roi_heads = StandardROIHeads(cfg, backbone.output_shape())
        else:
            backbone = trunk
            parts = Res5ROIHeads.from_config(cfg, backbone.output_shape())
            parts["res5"] = convert_norm(copy.deepcopy(classifier.layer4), norm)
            roi_heads = Res5ROIHeads(**parts)
        self.model = GeneralizedRCNN(backbone=backbone,
                                     proposal_generator=build_proposal_generator(cfg, backbone.output_shape()),
                                     roi_heads=roi_heads, pixel_mean=MEAN, pixel_std=STD, input_format="RGB")

    def _inputs(self, images, targets=None):
        from detectron2.structures import Boxes, Instances

        inputs = []
        for i, image in enumerate(images):
            item = {"image": image * 255.0, "height": image.shape[-2], "width": image.shape[-1]}
            if targets is not None:
                instances = Instances(tuple(image.shape[-2:]))
                instances.gt_boxes = Boxes(targets[i]["boxes"])
                instances.gt_classes = targets[i]["labels"] - 1
                item["instances"] = instances
            inputs.append(item)
        return inputs

    def losses(self, batch):
        from detectron2.utils.events import EventStorage

        with EventStorage(0):
            return self.model(self._inputs([im for im, _ in batch], [t for _, t in batch]))

    def detect(self, images):
        out = []
        for result in self.model(self._inputs(images)):
            instances = result["instances"]
            out.append({"boxes": instances.pred_boxes.tensor, "scores": instances.scores,
                        "labels": instances.pred_classes + 1})
        return out


def make_side(name: str, work: Work, classifier: nn.Module, num_classes: int, pretrained: bool,
              ours_extra: tuple[str, ...] = ()) -> Side:
    library, head = name.split("-")
    if library == "ours":
        return OursSide(work, head, classifier, num_classes, pretrained, ours_extra)
    if library == "torchvision":
        return TorchvisionSide(work, classifier, num_classes, pretrained)
    return Detectron2Side(work, head, classifier, num_classes, pretrained)


# each library's anchors in our detector (torchvision's: corners rounded to whole pixels, a level's stride from the
# padded image), for the loss parity, which needs the peer's whatever the start
TORCHVISION_ANCHORS = ("round_anchors=true", "anchor_stride_from_image=true")
DETECTRON2_ANCHORS = ("round_anchors=false", "anchor_stride_from_image=false")
TORCHVISION_LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_loc",
                          "loss_classifier": "loss_cls", "loss_box_reg": "loss_box_reg"}


StepComparison = tuple[dict[str, float], float, float, int]  # our losses, loss and gradient differences, tensors


def compare_step(theirs: Side, ours: OursSide, trunk: nn.Module, batch) -> StepComparison:
    """One training step of two detectors on `batch`: our losses, the largest relative difference of theirs (in
    our names) from ours, and of their backbone's gradients (`trunk`) from ours, and how many tensors had one.
    Theirs may name the losses as torchvision does; torchvision's RPN losses are averages over the anchors that
    count, ours sums over `rpn_batch` per image, so with every anchor sampled theirs are put on our scale (the
    anchor count is our RPN's, which matches the same anchors)."""
    losses = []
    for side in (theirs, ours):
        side.model.train()
        side.model.zero_grad()
        losses.append({TORCHVISION_LOSS_NAMES.get(k, k): v for k, v in side.losses(batch).items()})
    if isinstance(theirs, TorchvisionSide):
        stats = ours.model.rpn.stats
        counted = float(stats["rpn_pos_anchors"] + stats["rpn_neg_anchors"]) / ours.model.rpn.batch_size_per_image
        for key in ("loss_rpn_cls", "loss_rpn_loc"):
            losses[0][key] = losses[0][key] * counted
    for values in losses:
        sum(values.values()).backward()
    theirs_values, ours_values = ({k: float(v.detach()) for k, v in values.items()} for values in losses)
    loss_diff = max(abs(theirs_values[k] - v) / max(abs(v), 1e-12) for k, v in ours_values.items())
    grads = [(a.grad, b.grad) for a, b in zip(trunk.parameters(), ours.trunk.parameters(), strict=True)
             if a.grad is not None]
    return ours_values, loss_diff, max(relative_difference(a, b) for a, b in grads), len(grads)


PARITY_PEERS = ("torchvision-fpn", "detectron2-c4", "detectron2-fpn")


def loss_parity(work: Work, peer: str, classifier: nn.Module, batch, pretrained: bool) -> StepComparison:
    """Our detector against a peer (`PARITY_PEERS`) on one batch, with the peer's head weights (and FPN) loaded
    into ours, every anchor and RoI sampled, and against torchvision, torchvision's anchors: `compare_step`'s
    figures."""
    everything = replace(work, rpn_batch=10**6, roi_batch=10**6, roi_fg_fraction=1.0)
    library, head = peer.split("-")
    theirs = make_side(peer, everything, classifier, 1, pretrained)
    anchors = TORCHVISION_ANCHORS if library == "torchvision" else DETECTRON2_ANCHORS
    ours = OursSide(everything, head, classifier, 1, pretrained, anchors)
    if library == "torchvision":
        heads = {k: v for k, v in theirs.model.state_dict().items() if not k.startswith("backbone.body.")}
        trunk = theirs.model.backbone.body
    else:
        parts = ("proposal_generator.", "roi_heads.box_head.", "roi_heads.box_predictor.", "backbone.fpn_")
        heads = {k: v for k, v in theirs.model.state_dict().items() if k.startswith(parts)}
        trunk = theirs.model.backbone.bottom_up.trunk if head == "fpn" else theirs.model.backbone.trunk
    ours.model.load_state_dict(heads_state_dict(WeightFile({}, f"{library} side", format=library, extra=heads)),
                               strict=False)
    return compare_step(theirs, ours, trunk, batch)


def run_in_float64(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                   ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """For `--loss-parity --float64`: new tensors (the models built next) in float64, the batch converted, and
    detectron2's proposal NMS given boxes and scores of one type (it casts only the boxes to float32, which
    torchvision's NMS refuses beside float64 scores). detectron2 keeps every box in float32 (`Boxes`), so its
    anchors, proposals and RoIs stay float32-rounded."""
    import detectron2.modeling.proposal_generator.proposal_utils as proposal_utils
    from torchvision.ops import batched_nms

    torch.set_default_dtype(torch.float64)
    proposal_utils.batched_nms = lambda boxes, scores, groups, iou: batched_nms(boxes.double(), scores.double(),
                                                                                groups, iou)
    return [(image.double(), {**target, "boxes": target["boxes"].double()}) for image, target in batch]


def side_optimizer(side: Side, work: Work, lr: float) -> torch.optim.SGD:
    """The same SGD for every side: its trainable parameters, `work`'s momentum and weight decay."""
    return torch.optim.SGD([p for p in side.model.parameters() if p.requires_grad], lr=lr, momentum=work.momentum,
                           weight_decay=work.weight_decay)


# ----- one run ---------------------------------------------------------------------------------------------------
def train_and_evaluate(side: Side, batches, work: Work, val: ResizedSet) -> dict[str, Any]:
    optimizer = side_optimizer(side, work, work.lr)
    schedule = LRSchedule(work.lr, steps=work.steps, warmup_iters=work.warmup_iters, warmup_factor=0.001,
                          warmup_method="linear")
    side.model.train()
    losses_seen: list[float] = []
    start = time.perf_counter()
    for it, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(it)
        try:
            total = sum(side.losses(batch).values())
        except FloatingPointError:  # detectron2's RPN raises it on non-finite proposals
            return {"diverged_at": it}
        if not torch.isfinite(total):
            return {"diverged_at": it}
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses_seen.append(float(total.detach()))
    seconds_per_iter = (time.perf_counter() - start) / len(batches)
    side.model.eval()
    detections = {}
    with torch.no_grad():
        for i in range(0, len(val.images), 4):
            images = val.images[i:i + 4]
            for k, out in enumerate(side.detect(images)):
                sx, sy = val.scales[i + k]
                boxes = out["boxes"] * torch.tensor([sx, sy, sx, sy])
                detections[val.dataset.records[i + k].image_id] = {
                    "boxes": boxes.numpy(), "scores": out["scores"].numpy(), "labels": out["labels"].numpy()}
    coco = score(detections, val.dataset, ["coco"])["coco"]
    tail = losses_seen[-max(1, len(losses_seen) // 10):]
    return {"AP": coco["AP"], "AP50": coco["AP50"], "s_per_iter": seconds_per_iter,
            "final_loss": sum(tail) / len(tail)}


def step_times(work: Work, sides: list[str], classifier: nn.Module, num_classes: int, pretrained: bool,
               batches, repeats: int) -> str:
    """Seconds per training step (losses, backward, SGD step) of each side, interleaved so that the machine's drift
    hits all alike: each side takes the same batches in the same order. Returns a markdown table with each peer's
    time over ours of the same head (> 1: ours is faster)."""
    steps = {}
    for name in sides:
        torch.manual_seed(1)
        side = make_side(name, work, classifier, num_classes, pretrained)
        side.model.train()
        optimizer = side_optimizer(side, work, 1e-4)
        stream = iter(batches * (repeats + 4))

        def step(side: Side = side, optimizer: torch.optim.Optimizer = optimizer, stream=stream) -> None:
            total = sum(side.losses(next(stream)).values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

        steps[name] = step
    times = interleaved_times(steps, torch.device("cpu"), repeats, warmup=2)
    lines = ["| side | s/step (wall) | CPU s/step | peer / ours of the same head: wall, CPU |", "|---|---|---|---|"]
    for name, t in times.items():
        ours = times.get(f"ours-{name.split('-')[1]}")
        ratio = (f"{t['wall'] / ours['wall']:.2f}, {t['cpu'] / ours['cpu']:.2f}" if ours and not name.startswith("ours")
                 else "")
        lines.append(f"| {name} | {t['wall']:.3f} | {t['cpu']:.3f} | {ratio} |")
    return "\n".join(lines)


# ----- the report ------------------------------------------------------------------------------------------------
def report(path: Path) -> str:
    """Markdown: per dataset and start, each side's AP and AP50 as mean +- spread (sample std) over seeds."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for line in path.read_text().splitlines():
        if line.strip():
            run = json.loads(line)
            groups[(run["dataset"], run["start"])][run["side"]].append(run)
    lines = []
    for (dataset, start), sides in sorted(groups.items()):
        lines += [f"\n{dataset}, {start}:", "", "| side | seeds | COCO AP | AP50 | s/iter | final loss |",
                  "|---|---|---|---|---|---|"]
        for side in [*SIDES, *sorted(set(sides) - set(SIDES))]:
            runs = sides.get(side)
            if not runs:
                continue
            done = [r for r in runs if "AP" in r]

            def stat(key: str, runs: list[dict] = done) -> str:
                values = [r[key] for r in runs]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{statistics.mean(values):.2f} ± {spread:.2f}"

            diverged = len(runs) - len(done)
            lines.append(f"| {side} | {len(done)}{f' (+{diverged} diverged)' if diverged else ''} | "
                         + (f"{stat('AP')} | {stat('AP50')} | {statistics.mean(r['s_per_iter'] for r in done):.3f} "
                            f"| {statistics.mean(r['final_loss'] for r in done):.3f} |" if done else "| | | |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=["ours-fpn", "torchvision-fpn"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="none: only --loss-parity")
    parser.add_argument("--weights", help="start every side from this classifier (default: from scratch)")
    parser.add_argument("--name", help="the dataset's name in the report (default: --data or --train-ann)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", help="append one json line per run to this file")
    parser.add_argument("--report", metavar="RESULTS", help="print the table of a results file and exit")
    parser.add_argument("--step-times", type=int, metavar="N", help="time N training steps of each side, "
                        "interleaved, before training (0: none)", default=0)
    parser.add_argument("--loss-parity", action="store_true", help="check one training step against torchvision's "
                        "(FPN) and detectron2's (C4 and FPN) before training")
    parser.add_argument("--ours-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of our sides' model config (e.g. roi.head_init=torchvision), on top of the "
                        "work; such a side is reported as its own (its name followed by the overrides)")
    parser.add_argument("--float64", action="store_true", help="with --loss-parity: both detectors and the batch in "
                        "float64, to tell float32 rounding from a difference in what is computed")
    for key, value in asdict(Work()).items():
        kind = type(value[0]) if isinstance(value, list) else type(value)
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, nargs="+" if isinstance(value, list) else None,
                            default=value)
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.report)))
        return
    if args.float64 and (not args.loss_parity or args.seeds or args.step_times):
        parser.error("--float64 is for the one-step check alone: --loss-parity --seeds (no training, no --step-times)")
    torch.set_num_threads(args.threads)
    work = Work(**{key: getattr(args, key) for key in asdict(Work())})
    try:
        our_config(work, "fpn", bool(args.weights), tuple(args.ours_set))
    except UserError as exc:
        parser.error(f"--ours-set: {exc}")
    data = {key: getattr(args, flag) for flag, key in DATA_FLAG_KEYS.items()}
    data["dataset"] = data["dataset"] or "coco"
    train = build_detection_dataset(data, train=True)
    val = build_detection_dataset(data, train=False, class_names=train.class_names)
    name = args.name or args.data or args.train_ann
    start = f"from {Path(args.weights).name}" if args.weights else "from scratch"
    print(f"{name}: {len(train)} training / {len(val)} evaluation images, {len(train.class_names)} classes; {start}; "
          f"{machine_line(torch.device('cpu'))}\nwork: {asdict(work)}")
    train_set, val_set = ResizedSet(train, work.min_size), ResizedSet(val, work.min_size)
    if args.loss_parity:
        batch = train_set.batches(work, 0)[0]
        if args.float64:
            batch = run_in_float64(batch)
        for peer in PARITY_PEERS:
            values, loss_diff, grad_diff, count = loss_parity(work, peer, initial_classifier(work, 0, args.weights),
                                                              batch, bool(args.weights))
            print(f"ours against {peer}{' (its anchors)' if peer.startswith('torchvision') else ''}: losses {values}; "
                  f"largest relative difference: losses {loss_diff:.1e}, backbone gradients {grad_diff:.1e} "
                  f"({count} tensors)")
    if args.step_times:
        print(step_times(work, args.sides, initial_classifier(work, 0, args.weights), len(train.class_names),
                         bool(args.weights), train_set.batches(replace(work, iterations=8), 0), args.step_times))
    for seed in args.seeds:
        batches = train_set.batches(work, seed)
        classifier = initial_classifier(work, seed, args.weights)
        for side_name in args.sides:
            torch.manual_seed(seed + 1)  # the heads' own initialisation
            side = make_side(side_name, work, classifier, len(train.class_names), bool(args.weights),
                             tuple(args.ours_set))
            torch.manual_seed(seed + 2)  # the samplers' draws
            label = side_name + (f" ({', '.join(args.ours_set)})" if side_name.startswith("ours") and args.ours_set
                                 else "")
            result = {"dataset": name, "start": start, "side": label, "seed": seed,
                      **train_and_evaluate(side, batches, work, val_set)}
            print(json.dumps(result), flush=True)
            if args.results:
                with open(args.results, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**result, "work": asdict(work)}) + "\n")


if __name__ == "__main__":
    main()
