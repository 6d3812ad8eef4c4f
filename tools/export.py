#!/usr/bin/env python
"""Export a classifier or a Faster R-CNN detector to ONNX (or a classifier to TorchScript).

    python tools/export.py --checkpoint runs/r50/model_final.pth --format onnx --output r50.onnx
    python tools/export.py --checkpoint runs/det/model_final.pth --format onnx --output det.onnx --size 600 800

Classifiers take a (N, 3, H, W) ImageNet-normalised RGB batch of any size and return logits. Detectors take
one (3, H, W) RGB image in 0..1 of any size and return boxes (N, 4, in its pixels), scores and labels (1..K);
resizing and normalisation are inside. ONNX files are checked with onnxruntime against PyTorch, both the model as
trained and the inference copy that was exported (BN folded), on two inputs of different shapes: for detectors
a real photograph (`--image`, by default the sample street scene shipped in `detection/assets/`) and a resized
copy, compared detection by detection (label, box and score as one record); for classifiers random batches.
Float32 rounding grows with the network's depth and the values' size, so the tolerances do too: boxes within
2e-6 x layers x the image's longer side pixels, scores within 2e-5 x layers, logits within 1e-5 x layers x their
largest magnitude. The numbers are written to `<output>.check.json`. TorchScript is for classifiers: a trace of
the detector would freeze its image-size logic, which the ONNX export keeps symbolic.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
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
from engine.export import (
    FORMATS,
    detection_differences,
    export_model,
    image_dims,
    max_difference,
    onnx_outputs,
    torch_outputs,
)
from engine.images import load_rgb
from engine.logs import get_logger

log = get_logger()

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "detection" / "assets" / "street.jpg"


def layers(model: torch.nn.Module) -> int:
    """Convolutions and fully connected layers: the depth that float32 rounding accumulates over."""
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


def check_onnx(path: Path, references: dict[str, torch.nn.Module], inputs: list[tuple[torch.Tensor, ...]],
               input_names: list[str], detector: bool) -> dict:
    """onnxruntime against each reference model on each input: the differences, the tolerances they must meet
    (see the module docstring) and whether they do."""
    depth = max(layers(m) for m in references.values())
    got = onnx_outputs(path, inputs, input_names)
    rows, passed = [], True
    for args, have in zip(inputs, got, strict=True):
        row = {"shape": list(args[0].shape), "against": {}}
        for name, model in references.items():
            want = torch_outputs(model, [args])[0]
            if detector:
                diffs = detection_differences(want, have)
                tolerance = {"boxes": 2e-6 * depth * max(args[0].shape[1:]), "scores": 2e-5 * depth}
            else:
                diffs = {"count": float(len(want[0])), "logits": max_difference(want[0], have[0])}
                tolerance = {"logits": 1e-5 * depth * max(1.0, want[0].abs().max().item())}
            ok = all(diffs[k] <= t for k, t in tolerance.items())
            row["against"][name] = {**diffs, "tolerance": tolerance, "passed": ok}
            passed &= ok
        rows.append(row)
    return {"layers": depth, "inputs": rows, "passed": passed,
            "compared": int(sum(r["against"][next(iter(references))]["count"] for r in rows))}


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
                        "(default 224 224 for classifiers; for detectors the image's own, or it resized to this)")
    parser.add_argument("--arch", help="classifier weights that do not record their architecture")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="classifier builder option the weights do not record (e.g. width=32)")
    parser.add_argument("--image", help="detectors: check on this image (and a resized copy); default: the shipped "
                        "sample photograph")
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
        references = {"inference copy": model, "as trained": SingleImageDetector(detector.eval())}
        source = args.image or SAMPLE_IMAGE
        image = torch.from_numpy(np.array(load_rgb(source))).permute(2, 0, 1).float() / 255
        if args.size:
            image = F.interpolate(image[None], size=tuple(args.size), mode="bilinear")[0]
        size = list(image.shape[1:])
        example = (image,)
        other = (F.interpolate(image[None], size=(size[0] * 3 // 4, size[1] * 5 // 4), mode="bilinear")[0],)
        names, outputs = ["image"], ["boxes", "scores", "labels"]
        shapes = (image_dims(),)
        what = f"Faster R-CNN {cfg['model']['backbone']} ({len(class_names)} classes)"
    else:
        model, arch = load_classifier(args.checkpoint or args.weights, args.arch, parse_key_values(args.option))
        references = {"as trained": model}
        size = args.size or [224, 224]
        example = (torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)),)
        other = (torch.randn(3, 3, size[0] + 32, size[1] - 32 if size[1] > 64 else size[1] + 64,
                             generator=torch.Generator().manual_seed(1)),)
        names, outputs = ["images"], ["logits"]
        shapes = (image_dims(batch=True),)
        what = arch
    model = model.to(device)
    references = {k: m.to(device) for k, m in references.items()}
    path = export_model(model, tuple(x.to(device) for x in example), args.output, args.format, dynamic_shapes=shapes,
                        input_names=names, output_names=outputs)
    log.info(f"{what} -> {path} ({args.format})")
    if args.format == "onnx" and not args.no_check:
        check = check_onnx(path, references, [example, other], names, detector=outputs[0] == "boxes")
        report = Path(f"{path}.check.json")
        report.write_text(json.dumps(check, indent=2), encoding="utf-8")
        for row in check["inputs"]:
            for name, diffs in row["against"].items():
                shown = ", ".join(f"{k} {v:.1e} (tolerance {diffs['tolerance'][k]:.1e})" for k, v in diffs.items()
                                  if k in diffs["tolerance"])
                log.info(f"onnxruntime vs PyTorch ({name}) on {tuple(row['shape'])}: {int(diffs['count'])} "
                         f"{'detections' if outputs[0] == 'boxes' else 'rows'}; {shown}")
        if outputs[0] == "boxes" and not check["compared"]:
            log.info(f"{source}: no detections in either, so nothing was compared; give --image with objects this "
                     "detector finds")
        if not check["passed"]:
            raise UserError(f"{path}: onnxruntime disagrees with PyTorch beyond the tolerance (the numbers: {report})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
