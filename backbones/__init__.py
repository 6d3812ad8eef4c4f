"""Every backbone of the paper behind one registry: ResNet-18..152, plain nets, CIFAR 6n+2 nets, VGG-16/19.

    import backbones
    model = backbones.build_model("resnet50", num_classes=1000, stride_in_1x1=True)
    trunk = backbones.build_backbone("resnet101", ["res4"], freeze_at=2, norm="frozen_bn")
"""

from backbones import cifar, resnet, vgg  # noqa: F401  (importing registers the models)
from backbones.features import Backbone, ShapeSpec, backbone_from_model, build_backbone, split_model
from backbones.layers import NORMS, FrozenBatchNorm2d, SyncBatchNorm2d, ZeroPadShortcut, convert_norm, freeze_batchnorm
from backbones.layouts import guess_arch
from backbones.registry import ModelInfo, build_model, list_models, model_info
from backbones.stats import count_multiply_adds, count_parameters, model_stats, paper_table
from backbones.weights import WeightFile, load_weights, read_weights

__all__ = [
    "NORMS", "Backbone", "FrozenBatchNorm2d", "ModelInfo", "ShapeSpec", "SyncBatchNorm2d", "WeightFile",
    "ZeroPadShortcut", "backbone_from_model", "build_backbone", "build_model", "convert_norm",
    "count_multiply_adds", "count_parameters",
    "freeze_batchnorm", "guess_arch", "list_models", "load_weights", "model_info", "model_stats",
    "paper_table", "read_weights", "split_model",
]
