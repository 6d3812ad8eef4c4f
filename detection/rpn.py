"""Region Proposal Network: a small conv head on the shared feature map, its losses, and proposals."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.matcher import Matcher
from detection.ops import grouped_nms
from detection.sampler import sample_labels
from detection.structures import ImageList


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs: an objectness logit and 4 deltas per anchor."""

    def __init__(self, in_channels: int, num_anchors: int, conv_channels: int | None = None) -> None:
        super().__init__()
        conv_channels = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(conv_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(conv_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv(x))
        return self.objectness_logits(x), self.anchor_deltas(x)


def clip_to_sizes(boxes: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Clip boxes (..., 4) to per-row (width, height) `limits` (..., 2)."""
    upper = torch.cat([limits, limits], dim=-1)
    return torch.minimum(boxes.clamp(min=0), upper)


class RegionProposalNetwork(nn.Module):
    """Scores and refines anchors on one feature map (C4) or several (FPN, one head shared by the levels);
    returns per-image proposals and, in training, its two losses.

    Defaults follow Faster R-CNN: 256 anchors per image at most half positive (IoU >= 0.7, or the best
    anchor of a box) against negatives (IoU < 0.3), among the anchors inside the image (`allowed_border` 0;
    -1 trains on all, as detectron2); proposals: top `pre_nms_topk` by objectness on each level, those at least
    `min_box_size` pixels wide and high at the image's original scale (16; 0 keeps any non-empty box), NMS 0.7
    within each level, then the `post_nms_topk` best of the image (2000 training / 300 testing). NMS ranks by
    the objectness logits (detectron2) or, with `nms_on_probabilities`, by their sigmoid (torchvision: the same
    order except where float32 rounds two probabilities to one). Losses are normalised by the sampled anchor
    count.
    """

    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator, *, matcher: Matcher | None = None,
                 box_coder: BoxCoder | None = None, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_topk: tuple[int, int] = (12000, 6000), post_nms_topk: tuple[int, int] = (2000, 300),
                 nms_thresh: float = 0.7, min_box_size: float = 16.0, allowed_border: float = 0.0,
                 nms_on_probabilities: bool = False, smooth_l1_beta: float = 1 / 9, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.head, self.anchor_generator = head, anchor_generator
        self.matcher = matcher or Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)
        self.box_coder = box_coder or BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_topk, self.post_nms_topk = pre_nms_topk, post_nms_topk
        self.nms_thresh, self.min_box_size, self.allowed_border = nms_thresh, min_box_size, allowed_border
        self.nms_on_probabilities = nms_on_probabilities
        self.smooth_l1_beta, self.loss_weight = smooth_l1_beta, loss_weight
        # the last training step's positive and negative sampled anchors per image, as detectron2 logs them
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, images: ImageList, features: torch.Tensor | list[torch.Tensor],
                targets: list[dict] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        features = [features] if isinstance(features, torch.Tensor) else features
        anchors = self.anchor_generator(features, tuple(images.tensors.shape[-2:]))
        logits, deltas = [], []
        for feature in features:
            level_logits, level_deltas = self.head(feature)
            b, a, h, w = level_logits.shape
            logits.append(level_logits.permute(0, 2, 3, 1).reshape(b, -1))  # (B, H*W*A), the anchors' order
            deltas.append(level_deltas.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        logits_all, deltas_all = torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
        proposals = self.find_proposals(anchors, logits_all.detach(), deltas_all.detach(), images.image_sizes,
                                        images.scales())
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            losses = self.losses(torch.cat(anchors), logits_all, deltas_all, targets, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def find_proposals(self, anchors: torch.Tensor | list[torch.Tensor], logits: torch.Tensor, deltas: torch.Tensor,
                       image_sizes: list[tuple[int, int]], scales: list[float] | None = None) -> list[torch.Tensor]:
        """Per image: on each level (`anchors` per level; `logits` (B, all anchors) and `deltas` (B, all anchors,
        4) in the same order) the best-scoring decoded anchors; then clipping, the minimum-size filter (in
        original pixels: `min_box_size` times the image's `scales` entry) and NMS within each level."""
        anchors = [anchors] if isinstance(anchors, torch.Tensor) else anchors
        pre = self.pre_nms_topk[0 if self.training else 1]
        post = self.post_nms_topk[0 if self.training else 1]
        b = logits.shape[0]
        logits = logits.float()  # scores and boxes in float32
        picked_scores, picked_boxes, picked_levels = [], [], []
        start = 0
        for level, level_anchors in enumerate(anchors):
            n = level_anchors.shape[0]
            scores, idx = logits[:, start:start + n].topk(min(pre, n), dim=1)
            k = idx.shape[1]
            level_deltas = deltas[:, start:start + n].gather(1, idx[..., None].expand(b, k, 4))
            picked_boxes.append(self.box_coder.decode(level_deltas.reshape(-1, 4), level_anchors[idx.reshape(-1)])
                                .view(b, k, 4))
            picked_scores.append(scores)
            picked_levels.append(torch.full((b, k), level, dtype=torch.int64, device=logits.device))
            start += n
        boxes, scores = torch.cat(picked_boxes, dim=1), torch.cat(picked_scores, dim=1)
        levels = torch.cat(picked_levels, dim=1)
        k = boxes.shape[1]
        limits = torch.tensor([[w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
        boxes = clip_to_sizes(boxes, limits[:, None, :]).reshape(-1, 4)
        scores = scores.reshape(-1)
        image_idx = torch.arange(b, device=boxes.device).repeat_interleave(k)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (widths > 0) & (heights > 0) & torch.isfinite(scores)
        if self.min_box_size > 0:
            smallest = self.min_box_size * torch.tensor(scales or [1.0] * b, dtype=boxes.dtype, device=boxes.device)
            keep &= (widths >= smallest[image_idx]) & (heights >= smallest[image_idx])
        keep = torch.nonzero(keep, as_tuple=True)[0]
        boxes, scores, image_idx = boxes[keep], scores[keep], image_idx[keep]
        groups = image_idx * len(anchors) + levels.reshape(-1)[keep]
        ranking = scores.sigmoid() if self.nms_on_probabilities else scores
        keep = grouped_nms(boxes, ranking, groups, self.nms_thresh, limits.max())  # by decreasing score
        return [boxes[keep[image_idx[keep] == i][:post]] for i in range(b)]

    def losses(self, anchors: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor, targets: list[dict],
               image_sizes: list[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
        """Objectness and box losses on `batch_size_per_image` sampled anchors per image, summed and divided by
        that number times the images; computed on the sampled anchors only, with masks (no host sync)."""
        picked, counts, labels, matched = [], [], [], []
        for i, target in enumerate(targets):
            gt = target["boxes"]
            iou = box_iou(gt, anchors)
            outside = None
            if self.allowed_border >= 0 and image_sizes is not None:
                # Faster R-CNN trains the RPN on anchors inside the image (and its padding) only
                h, w = image_sizes[i]
                b = self.allowed_border
                outside = ((anchors[:, 0] < -b) | (anchors[:, 1] < -b) | (anchors[:, 2] > w + b)
                           | (anchors[:, 3] > h + b))
                iou = iou.masked_fill(outside[None, :], -1.0)  # never anyone's best anchor either
            matches, match_labels = self.matcher(iou)
            if outside is not None:
                match_labels = match_labels.masked_fill(outside, -1)
            idx, valid = sample_labels(match_labels, self.batch_size_per_image, self.positive_fraction)
            picked.append(idx)
            counts.append(valid)
            labels.append(match_labels[idx])
            matched.append(gt[matches[idx]] if len(gt) else anchors[idx])
        idx, valid, labels_t = torch.stack(picked), torch.stack(counts), torch.stack(labels)
        positive = valid & (labels_t == 1)
        self.stats = {"rpn_pos_anchors": positive.sum() / len(targets),
                      "rpn_neg_anchors": (valid & (labels_t == 0)).sum() / len(targets)}
        normalizer = self.batch_size_per_image * len(targets)
        objectness = F.binary_cross_entropy_with_logits(logits.gather(1, idx), (labels_t == 1).to(logits.dtype),
                                                        reduction="none")
        sampled_anchors = anchors[idx]  # (B, n, 4)
        box_targets = self.box_coder.encode(sampled_anchors.reshape(-1, 4), torch.stack(matched).reshape(-1, 4))
        box_targets = torch.where(positive.reshape(-1, 1), box_targets, 0.0)  # no NaN from unmatched ones
        predicted = deltas.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        regression = F.smooth_l1_loss(predicted, box_targets.to(predicted.dtype), beta=self.smooth_l1_beta,
                                      reduction="none")
        return {"loss_rpn_cls": self.loss_weight * torch.where(valid, objectness, 0.0).sum() / normalizer,
                "loss_rpn_loc": self.loss_weight * torch.where(positive.reshape(-1, 1), regression, 0.0).sum()
                / normalizer}
