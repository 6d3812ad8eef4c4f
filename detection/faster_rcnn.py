"""Faster R-CNN as the composition of a shared backbone (a ResNet trunk, or a trunk and an FPN), the RPN and the
RoI heads (torchvision's convention: losses in training mode, per-image `{"boxes", "scores", "labels"}` in
original coordinates otherwise)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from backbones.layers import fold_frozen_batchnorm, freeze_batchnorm
from detection.roi_heads import RoIHeads
from detection.rpn import RegionProposalNetwork
from detection.transform import DetectionTransform


class FasterRCNN(nn.Module):
    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 transform: DetectionTransform, rpn_features: list[str], roi_features: list[str]) -> None:
        """`backbone(images)` returns named feature maps: the RPN runs on `rpn_features` (C4: res4; FPN: p2..p6),
        the RoI heads pool from `roi_features` (C4: res4; FPN: p2..p5)."""
        super().__init__()
        self.backbone, self.rpn, self.roi_heads, self.transform = backbone, rpn, roi_heads, transform
        self.rpn_features, self.roi_features = list(rpn_features), list(roi_features)
        self.channels_last = False  # feed the backbone NHWC images (see `inference_copy`)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]  # no int(): symbolic when exporting
        image_list, targets = self.transform(images, targets)
        pixels = image_list.tensors
        features = self.backbone(pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels)
        proposals, rpn_losses = self.rpn(image_list, [features[n] for n in self.rpn_features], targets)
        detections, roi_losses = self.roi_heads([features[n] for n in self.roi_features], proposals,
                                                image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def training_stats(self) -> dict[str, torch.Tensor]:
        """The last training step's sampling figures as device tensors: positive and negative anchors per image
        (RPN), foreground fraction and classification accuracy of the sampled RoIs (see `sample_statistics`)."""
        return {**self.rpn.stats, **self.roi_heads.stats}


def inference_copy(model: FasterRCNN, channels_last: bool = True, compile: bool = False) -> FasterRCNN:
    """A copy of a detector made for inference: every BN (frozen, or trained: its running statistics) folded into
    its convolution (one pass over the activations instead of two) and, with `channels_last`, weights and images
    in NHWC memory format, which oneDNN's CPU convolutions and cuDNN's tensor cores prefer. `compile` puts the
    backbone and the box head (the convolutions; not the proposal and NMS steps, whose sizes depend on the data)
    under `torch.compile` with dynamic image sizes. The same detections up to float rounding; the copy has no BN
    buffers, so train and save the original."""
    fast = fold_frozen_batchnorm(freeze_batchnorm(copy.deepcopy(model).eval()))
    if channels_last:
        fast.to(memory_format=torch.channels_last)
        fast.channels_last = True
    if compile:
        fast.backbone = torch.compile(fast.backbone, dynamic=True)
        fast.roi_heads.box_head = torch.compile(fast.roi_heads.box_head, dynamic=True)
    return fast


class SingleImageDetector(nn.Module):
    """One image in, three tensors out: the detector in the shape that ONNX / torch.export deployment wants.

    Input: a float RGB image (3, H, W) in 0..1 of any size; output: boxes (N, 4) xyxy in its pixels, scores (N,),
    labels (N,) (1..K; 0 is background). Resizing and normalisation happen inside, as in `FasterRCNN`.
    """

    def __init__(self, detector: FasterRCNN) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = self.detector([image])[0]
        return result["boxes"], result["scores"], result["labels"]
