"""Per-region part of Faster R-CNN: RoI pooling (one feature map, or the FPN levels), the box head (ResNet res5,
or two fully connected layers: VGG's fc6/fc7, FPN's 2 x 1024), the sibling classifier and class-specific box
regressor, their losses, and test-time post-processing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_align, roi_pool

from backbones.layers import make_norm
from detection.box_coder import BoxCoder
from detection.matcher import Matcher
from detection.ops import grouped_nms
from detection.sampler import sample_labels

LEVEL_RULES = ("detectron2", "torchvision")


def assign_levels(boxes: torch.Tensor, min_level: int, max_level: int, canonical_box_size: float = 224.0,
                  canonical_level: int = 4, rule: str = "detectron2") -> torch.Tensor:
    """FPN level index (0 = `min_level`) of each box: floor(canonical_level + log2(sqrt(area) / canonical size)),
    clamped. The two libraries guard the floor differently at exact powers of two: detectron2 adds 1e-8 inside
    the log, torchvision 1e-6 outside it."""
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    if rule == "detectron2":
        levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    elif rule == "torchvision":
        levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size) + 1e-6)
    else:
        raise ValueError(f"level rule must be one of {', '.join(LEVEL_RULES)}, got {rule!r}")
    return (levels.clamp(min_level, max_level) - min_level).to(torch.int64)


class RoIPooler(nn.Module):
    """RoIAlign (`aligned=True` is detectron2's ROIAlignV2) or the paper's RoIPool, to a fixed grid, from one
    feature map (C4, VGG) or from the FPN level each box belongs to (`spatial_scale` one per level, finest
    first, `min_level` the finest's level, see `assign_levels`)."""

    def __init__(self, output_size: int, spatial_scale: float | list[float], kind: str = "roialign",
                 sampling_ratio: int = 0, aligned: bool = True, *, min_level: int = 2,
                 canonical_box_size: float = 224.0, canonical_level: int = 4, level_rule: str = "detectron2") -> None:
        super().__init__()
        if kind not in ("roialign", "roipool"):
            raise ValueError(f"pooler must be roialign or roipool, got {kind!r}")
        self.output_size, self.kind = output_size, kind
        self.scales = [spatial_scale] if isinstance(spatial_scale, (int, float)) else list(spatial_scale)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.min_level, self.canonical_box_size = min_level, canonical_box_size
        self.canonical_level, self.level_rule = canonical_level, level_rule

    def _pool(self, feature: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
        if self.kind == "roipool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features: torch.Tensor | list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """Pool `boxes` (image pixels, per image) from `features`. Half-precision feature maps (autocast) are
        pooled in float32, as torchvision's autocast does for RoIAlign, and returned in their own precision:
        the box coordinates are never rounded to 8 bits of mantissa."""
        features = [features] if isinstance(features, torch.Tensor) else features
        boxes = [b.float() if b.dtype != torch.float64 else b for b in boxes]
        dtype = boxes[0].dtype
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        maps = [f if f.dtype == dtype else f.to(dtype) for f in features]
        if len(maps) == 1:
            return self._pool(maps[0], rois, self.scales[0]).to(features[0].dtype)
        levels = assign_levels(rois[:, 1:], self.min_level, self.min_level + len(maps) - 1,
                               self.canonical_box_size, self.canonical_level, self.level_rule)
        out = rois.new_zeros((rois.shape[0], maps[0].shape[1], self.output_size, self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, self.scales, strict=True)):
            idx = torch.nonzero(levels == level, as_tuple=True)[0]
            out[idx] = self._pool(feature, rois[idx], scale).to(out.dtype)
        return out.to(features[0].dtype)


class C4BoxHead(nn.Module):
    """ResNet conv5_x run on every pooled region (its first block halves 14x14 to 7x7), then global average
    pooling: the paper's "RoI pooling before conv5_1" design."""

    def __init__(self, res5: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.res5, self.out_features = res5, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


def _check_head_init(init: str) -> str:
    """`init` if it names one of the two head initialisations (detectron2's, torchvision's); else ValueError."""
    if init not in ("detectron2", "torchvision"):
        raise ValueError(f"head initialisation must be 'detectron2' or 'torchvision', got {init!r}")
    return init


class FCBoxHead(nn.Module):
    """Optional 3x3 convolutions (each with its norm and ReLU) on the pooled regions, then fully connected layers
    `fc6`, `fc7`, ... with ReLU: VGG-16's fc6 and fc7 (initialised from the ImageNet classifier, dropout 0.5) on
    7x7 conv5_3 regions, the FPN detector's 2 x 1024 head, or detectron2's "4conv1fc" head of its GroupNorm
    recipes."""

    def __init__(self, fcs: Sequence[nn.Linear], dropout: float = 0.5, convs: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.convs = nn.Sequential(*convs)  # empty: no state-dict keys
        self.fc_names = [f"fc{6 + i}" for i in range(len(fcs))]
        for name, fc in zip(self.fc_names, fcs, strict=True):
            self.add_module(name, fc)
        self.dropout = nn.Dropout(dropout)
        self.out_features = fcs[-1].out_features

    @classmethod
    def fresh(cls, in_channels: int, resolution: int, fc_dim: int, num_fc: int = 2, num_conv: int = 0,
              conv_dim: int = 256, norm: str = "none", init: str = "detectron2") -> FCBoxHead:
        """Newly initialised layers (detectron2's c2_msra_fill for the convolutions; for the fully connected ones
        `init` "detectron2", its c2_xavier_fill: Kaiming-uniform with a = 1, zero bias, or "torchvision", PyTorch's
        `nn.Linear` default: Kaiming-uniform with a = sqrt(5), uniform bias)."""
        convs = []
        for i in range(num_conv):
            layer = make_norm(norm, conv_dim)
            conv = nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1, bias=layer is None)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            convs.append(nn.Sequential(conv, *([layer] if layer is not None else []), nn.ReLU(inplace=True)))
        width = (conv_dim if num_conv else in_channels) * resolution**2
        fcs = [nn.Linear(width if i == 0 else fc_dim, fc_dim) for i in range(num_fc)]
        if _check_head_init(init) == "detectron2":
            for layer in fcs:
                nn.init.kaiming_uniform_(layer.weight, a=1)
                nn.init.zeros_(layer.bias)
        return cls(fcs, dropout=0.0, convs=convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        for name in self.fc_names:
            x = self.dropout(F.relu(getattr(self, name)(x)))
        return x


class FastRCNNPredictor(nn.Module):
    """Sibling layers: K+1 class scores (0 is background) and 4 box deltas for each of the K classes."""

    def __init__(self, in_features: int, num_classes: int, init: str = "detectron2") -> None:
        """`init` "detectron2": class scores N(0, 0.01), box deltas N(0, 0.001), zero biases (also MMDetection's);
        "torchvision": PyTorch's `nn.Linear` default, about 3.6x (scores) and 36x (deltas) larger at 256 inputs."""
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        if _check_head_init(init) == "torchvision":
            return
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


@torch.no_grad()
def sample_statistics(class_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What detectron2 logs of the RoI head as it trains, over the sampled RoIs that count (label >= 0), as device
    tensors (no host sync): the foreground fraction, the classification accuracy, and that accuracy on the
    foreground RoIs (0 when there are none)."""
    counted, foreground = labels >= 0, labels > 0
    correct = class_logits.argmax(dim=1) == labels
    total, num_fg = counted.sum().clamp(min=1), foreground.sum()
    return {"roi_fg_fraction": num_fg / total, "roi_accuracy": (correct & counted).sum() / total,
            "roi_fg_accuracy": (correct & foreground).sum() / num_fg.clamp(min=1)}


class RoIHeads(nn.Module):
    """Samples `batch_size_per_image` proposals per image (`positive_fraction` foreground at IoU >= 0.5,
    background in [0.1, 0.5)), pools, classifies and regresses them; at test time decodes, clips, drops
    scores below `score_thresh`, runs per-class NMS and keeps `detections_per_image`."""

    def __init__(self, pooler: RoIPooler, box_head: nn.Module, predictor: FastRCNNPredictor, num_classes: int, *,
                 matcher: Matcher | None = None, box_coder: BoxCoder | None = None, batch_size_per_image: int = 128,
                 positive_fraction: float = 0.25, proposal_append_gt: bool = True, smooth_l1_beta: float = 1.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_image: int = 100,
                 min_box_size: float = 0.0) -> None:
        super().__init__()
        self.pooler, self.box_head, self.predictor, self.num_classes = pooler, box_head, predictor, num_classes
        self.matcher = matcher or Matcher((0.1, 0.5), (-1, 0, 1))
        self.box_coder = box_coder or BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.proposal_append_gt, self.smooth_l1_beta = proposal_append_gt, smooth_l1_beta
        self.score_thresh, self.nms_thresh, self.detections_per_image = score_thresh, nms_thresh, detections_per_image
        self.min_box_size = min_box_size  # 0: keep boxes clipped to nothing (detectron2); torchvision drops < 0.01 px
        self.stats: dict[str, torch.Tensor] = {}  # the last training step's sampling figures (`sample_statistics`)

    @torch.no_grad()
    def sample(self, proposals: list[torch.Tensor], targets: list[dict]
               ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Sampled boxes per image (a fixed number: `batch_size_per_image`, or all candidates if fewer), their
        class labels (0 background, -1 a sample that does not count: too few candidates to fill the batch) and
        matched ground-truth boxes; no host sync."""
        boxes_out, labels_out, gt_out = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt, gt_labels = target["boxes"], target["labels"]
            if self.proposal_append_gt:
                props = torch.cat([props, gt.to(props.dtype)])
            matches, match_labels = self.matcher(box_iou(gt, props))
            classes = gt_labels[matches] if len(gt) else torch.zeros_like(matches)
            classes = torch.where(match_labels == 1, classes, torch.zeros_like(classes))
            if len(gt):  # an image without objects is all background (as in torchvision and detectron2)
                classes = classes.masked_fill(match_labels == -1, -1)
            idx, valid = sample_labels(classes, self.batch_size_per_image, self.positive_fraction)
            boxes_out.append(props[idx])
            labels_out.append(torch.where(valid, classes[idx], -1))
            gt_out.append(gt[matches[idx]] if len(gt) else props[idx])
        return boxes_out, torch.cat(labels_out), torch.cat(gt_out)

    def forward(self, features: torch.Tensor | list[torch.Tensor], proposals: list[torch.Tensor],
                image_sizes: list[tuple[int, int]], targets: list[dict] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, labels, gt_boxes = self.sample(proposals, targets)
        x = self.box_head(self.pooler(features, proposals))
        class_logits, box_deltas = self.predictor(x)
        if self.training:
            self.stats = sample_statistics(class_logits.detach(), labels)
            return [], self.losses(class_logits, box_deltas, torch.cat(proposals), labels, gt_boxes)
        return self.inference(class_logits, box_deltas, proposals, image_sizes), {}

    def losses(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: torch.Tensor,
               labels: torch.Tensor, gt_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy over the sampled RoIs that count (label >= 0) and the class-specific box loss of the
        foreground ones, both divided by the number that count: means, zero (not NaN) when nothing counts.
        Masks instead of indexing: no host sync."""
        counted = labels >= 0
        total = counted.sum().clamp(min=1)
        loss_cls = F.cross_entropy(class_logits, labels.clamp(min=0), reduction="none")
        loss_cls = torch.where(counted, loss_cls, 0.0).sum() / total
        foreground = labels > 0
        rows = torch.arange(len(labels), device=labels.device)
        deltas = box_deltas.view(len(labels), self.num_classes, 4)[rows, (labels - 1).clamp(min=0)]
        targets = self.box_coder.encode(proposals, gt_boxes)
        targets = torch.where(foreground[:, None], targets, 0.0).to(deltas.dtype)  # no NaN from unmatched ones
        loss_loc = F.smooth_l1_loss(deltas, targets, beta=self.smooth_l1_beta, reduction="none")
        return {"loss_cls": loss_cls, "loss_box_reg": torch.where(foreground[:, None], loss_loc, 0.0).sum() / total}

    @torch.no_grad()
    def inference(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: list[torch.Tensor],
                  image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        probs = F.softmax(class_logits.float(), dim=1)[:, 1:]
        boxes = self.box_coder.decode(box_deltas.float(), torch.cat(proposals)).view(-1, self.num_classes, 4)
        results = []
        counts = [x.shape[0] for x in proposals]  # sizes, not len(): symbolic when exporting
        for (h, w), p, b in zip(image_sizes, probs.split(counts), boxes.split(counts), strict=True):
            b = torch.stack([b[..., 0].clamp(0, w), b[..., 1].clamp(0, h), b[..., 2].clamp(0, w),
                             b[..., 3].clamp(0, h)], dim=-1)
            labels = torch.arange(1, self.num_classes + 1, device=p.device).expand_as(p)
            # as detectron2: a box clipped to nothing (zero width or height) stays a detection when it scores
            keep = (p > self.score_thresh) & torch.isfinite(b).all(dim=-1)
            if self.min_box_size > 0:
                keep &= ((b[..., 2] - b[..., 0]) >= self.min_box_size) & ((b[..., 3] - b[..., 1]) >= self.min_box_size)
            b, p, labels = b[keep], p[keep], labels[keep]
            kept = grouped_nms(b, p, labels, self.nms_thresh, torch.sym_max(h, w))[: self.detections_per_image]
            results.append({"boxes": b[kept], "scores": p[kept], "labels": labels[kept]})
        return results
