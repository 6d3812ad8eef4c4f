#!/usr/bin/env python
"""Export a classifier or a Faster R-CNN detector to ONNX (or a classifier to TorchScript).

    python tools/export.py --checkpoint runs/r50/model_final.pth --format onnx --output r50.onnx
    python tools/export.py --checkpoint runs/det/model_final.pth --format onnx --output det.onnx --size 600 800

Classifiers take a (N, 3, H, W) ImageNet-normalised RGB batch of any size and return logits. Detectors take
one (3, H, W) RGB image in 0..1 of any size and return boxes (N, 4, in its pixels), scores and labels (1..K);
resizing and normalisation are inside. ONNX files are checked with onnxruntime against PyTorch on a random
input of `--size` and one of another shape (logits within 1e-4; the same detections, scores within 1e-4 and
boxes within 1e-3 px). TorchScript is for classifiers: a trace of the detector would freeze its
image-size logic, which the ONNX export keeps symbolic.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from classification.evaluate import load_classifier
from detection.build import detector_from_checkpoint
from detection.faster_rcnn import SingleImageDetector, inference_copy
from engine.checkpoint import load_checkpoint
from engine.cli import ToolParser, positive_int, run_cli
from engine.config import parse_key_values
from engine.distributed import resolve_device
from engine.errors import UserError
from engine.export import FORMATS, export_model, image_dims, onnx_max_differences
from engine.images import load_rgb
from engine.logs import get_logger

log = get_logger()

TOLERANCE = {"logits": 1e-4, "scores": 1e-4, "boxes": 1e-3, "labels": 0.0}


@torch.no_grad()  # not torch.set_grad_enabled: in-process callers keep their gradients
def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a classifier or detector this toolkit trained or converted "
                        "(model_final.pth, model_best.pth)")
    source.add_argument("--weights", help="classifier weights from elsewhere (torchvision, timm, MSRA)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True)
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="example input size "
                        "(default 224 224 for classifiers; for detectors the test size by 4/3 of it)")
    parser.add_argument("--arch", help="classifier weights that do not record their architecture")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="classifier builder option the weights do not record (e.g. width=32)")
    parser.add_argument("--image", help="detectors: check on this image (and a resized copy) instead of noise")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--device", default="cpu", help="where the model is traced and checked (cpu, cuda)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint) if args.checkpoint and args.checkpoint.endswith((".pth", ".pt")) else {}
    if state.get("kind") == "faster_rcnn":
        if args.format == "torchscript":
            raise UserError(f"{args.checkpoint}: detectors export to onnx (a TorchScript trace would freeze the "
                            "image size)")
        detector, cfg, class_names = detector_from_checkpoint(state, args.checkpoint)
        model = SingleImageDetector(inference_copy(detector, channels_last=False)).eval()  # BN folded
        test_size = cfg["model"]["test_min_size"] or cfg["model"]["min_size"][-1]
        size = args.size or [test_size, test_size * 4 // 3]  # not square: no coincidence for the export to see
        if args.image:
            image = torch.from_numpy(np.array(load_rgb(args.image))).permute(2, 0, 1).float() / 255
            size = list(image.shape[1:])
        else:
            image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
        example = (image,)
        other = (F.interpolate(image[None], size=(size[0] * 3 // 4, size[1] * 5 // 4), mode="bilinear")[0],)
        names, outputs = ["image"], ["boxes", "scores", "labels"]
        shapes = (image_dims(),)
        what = f"Faster R-CNN {cfg['model']['backbone']} ({len(class_names)} classes)"
    else:
        model, arch = load_classifier(args.checkpoint or args.weights, args.arch, parse_key_values(args.option))
        size = args.size or [224, 224]
        example = (torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)),)
        other = (torch.randn(3, 3, size[0] + 32, size[1] - 32 if size[1] > 64 else size[1] + 64,
                             generator=torch.Generator().manual_seed(1)),)
        names, outputs = ["images"], ["logits"]
        shapes = (image_dims(batch=True),)
        what = arch
    model = model.to(device)
    path = export_model(model, tuple(x.to(device) for x in example), args.output, args.format, dynamic_shapes=shapes,
                        input_names=names, output_names=outputs)
    log.info(f"{what} -> {path} ({args.format})")
    if args.format == "onnx" and not args.no_check:
        checks = onnx_max_differences(path, model, [example, other], names, detections=outputs[0] == "boxes")
        for inputs, diffs in zip((example, other), checks, strict=True):
            shown = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items() if k != "count")
            log.info(f"onnxruntime vs PyTorch on {tuple(inputs[0].shape)}: {int(diffs.pop('count'))} outputs in the "
                  f"first tensor; max |difference| {shown}")
            bad = [k for k, v in diffs.items() if not v <= TOLERANCE[k]]
            if bad:
                raise UserError(f"{path}: onnxruntime disagrees with PyTorch on {', '.join(bad)} beyond "
                                f"{', '.join(str(TOLERANCE[k]) for k in bad)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
