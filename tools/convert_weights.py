#!/usr/bin/env python
"""Convert weights from elsewhere into this toolkit's checkpoint (or safetensors), and ours back out.

    python tools/convert_weights.py --from msra --src R-101.pkl --output r101_msra.pth
    python tools/convert_weights.py --from torchvision --src resnet50-0676ba61.pth --output r50.safetensors
    python tools/convert_weights.py --from timm --src vgg16.tv_in1k/model.safetensors --output vgg16.pth
    python tools/convert_weights.py --from detectron2 --src model_final_721ade.pkl --output r50_c4.pth \
        --config detectron2_R50_C4
    python tools/convert_weights.py --from detectron2 --src model_final_b275ba.pkl --output r50_fpn.pth \
        --config detectron2_R50_FPN
    python tools/convert_weights.py --from torchvision --src fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \
        --output tv_r50_fpn.pth --config torchvision_R50_FPN
    python tools/convert_weights.py --from ours --src runs/r50/model_final.pth --output r50_tv.pth --to torchvision

Classifier weights: the result says which architecture, options (e.g. `stride_in_1x1` for MSRA weights) and
input convention (BGR, mean-only for MSRA) they need; `train_det.py --weights` and `eval_cls.py --weights`
read it (they also take the original files directly). A trained detectron2 (C4, FPN) or torchvision
(`fasterrcnn_resnet50_fpn`) detector becomes a detector checkpoint for `eval_det.py --checkpoint` and
`predict.py`, built from `--config` (the recipe of that library's model).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
from collections.abc import Sequence

import torch
import torchvision

import backbones
from backbones.features import model_head_prefixes
from backbones.saving import save_weights, torchvision_mismatch
from backbones.weights import FORMATS, WeightFile
from detection.build import import_detector
from detection.data.catalog import parse_class_names
from detection.train import DEFAULTS as DETECTION_DEFAULTS
from detection.train import LIMITS as DETECTION_LIMITS
from detection.train import OPEN_KEYS as DETECTION_OPEN_KEYS
from engine.checkpoint import save_checkpoint
from engine.cli import ToolParser, run_cli
from engine.config import load_config, parse_key_values
from engine.errors import UserError
from engine.logs import get_logger

log = get_logger()


def convert_detector(args: argparse.Namespace, weights: WeightFile) -> str:
    if args.to != "ours":
        raise UserError(f"{args.src}: a detector converts to our detector checkpoint only (--to ours)")
    if not args.config:
        raise UserError(f"{args.src}: a detector needs --config describing its model (detectron2_R50_C4, "
                        "detectron2_R101_C4, detectron2_R50_FPN, detectron2_R101_FPN or torchvision_R50_FPN)")
    cfg = load_config(DETECTION_DEFAULTS, args.config, args.overrides, open_keys=DETECTION_OPEN_KEYS,
                      limits=DETECTION_LIMITS)
    _, checkpoint = import_detector(weights, cfg, parse_class_names(args.class_names))
    out = save_checkpoint(checkpoint, Path(args.output))
    return (f"Faster R-CNN {cfg.model.backbone} {cfg.model.head.upper()}, {len(checkpoint['class_names'])} classes -> "
            f"{out}")


def convert_classifier(args: argparse.Namespace, weights: WeightFile) -> str:
    weights.options.update(parse_key_values(args.option))
    arch = args.arch or weights.arch or backbones.guess_arch(weights.state_dict)
    if arch is None:
        raise UserError(f"{args.src}: cannot tell the architecture; give --arch (one of resnet18..152, vgg16/19)")
    head = weights.state_dict.get("fc.weight", weights.state_dict.get("classifier.6.weight"))
    model = backbones.build_model(arch, None if head is None else head.shape[0], **weights.options)
    heads = () if head is not None else model_head_prefixes(model)  # detectron2 ResNets have no fc
    backbones.load_weights(model, weights, arch=arch, skip_prefixes=heads)  # proves the weights fit first
    if args.to == "torchvision":
        problem = torchvision_mismatch(arch, weights.options, weights.input_format) or (
            "the file has no classifier layer (fc), which torchvision's models have" if heads else None)
        if problem:
            raise UserError(f"{args.src}: no torchvision equivalent: {problem}")
        state = dict(model.state_dict())
        reference = getattr(torchvision.models, arch)(num_classes=head.shape[0])
        reference.load_state_dict(state, strict=True)  # what torchvision users will do with the file
        out = save_checkpoint(state, Path(args.output))
    else:
        weights.arch = arch
        out = save_weights(weights, args.output, arch)
    extra = f", options {weights.options}" if weights.options else ""
    fmt = f", input {weights.input_format}" if weights.input_format else ""
    return f"{arch}{extra}{fmt}: {len(weights.state_dict)} tensors -> {out}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--from", dest="source", choices=FORMATS,
                        help="the file's layout (default: told from the file; given, a different layout is an error)")
    parser.add_argument("--src", required=True, help="input: .pth/.bin state dict or checkpoint, .pkl, .safetensors")
    parser.add_argument("--output", "--dst", dest="output", required=True,
                        help="the converted file: .pth (our checkpoint) or .safetensors (classifiers)")
    parser.add_argument("--arch", help="registry name (default: recorded in the file or guessed from its keys)")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option the weights need and the file does not record (e.g. width=32)")
    parser.add_argument("--to", choices=["ours", "torchvision"], default="ours",
                        help="torchvision: write a bare state dict that torchvision.models.* load strictly")
    parser.add_argument("--config", help="detectors: the detection recipe of its model (a file, or a "
                        "shipped name: detectron2_R50_C4, detectron2_R101_C4)")
    parser.add_argument("--class-names", help="detectors: a,b,c or a file (default: COCO / VOC by count)")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="detection config overrides")
    args = parser.parse_intermixed_args(argv)
    weights = backbones.read_weights(args.src, expect=args.source)
    if weights.extra:  # a whole detector (detectron2's, torchvision's)
        log.info(convert_detector(args, weights))
    else:
        log.info(convert_classifier(args, weights))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(run_cli(main))
