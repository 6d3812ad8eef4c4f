#!/usr/bin/env python
"""Convert weights from elsewhere into this toolkit's checkpoint (or safetensors), and ours back out.

    python tools/convert_weights.py --from msra --src R-101.pkl --dst r101_msra.pth
    python tools/convert_weights.py --from torchvision --src resnet50-0676ba61.pth --dst r50.safetensors
    python tools/convert_weights.py --from ours --src runs/r50/model_final.pth --dst r50_tv.pth --to torchvision

The result says which architecture, options (e.g. `stride_in_1x1` for MSRA weights) and input convention
(BGR, mean-only for MSRA) the weights need; `train_det.py --weights` and `eval_cls.py --weights` read it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import backbones
from backbones.weights import save_weights
from engine.checkpoint import save_checkpoint
from engine.cli import run_cli
from engine.config import parse_key_values
from engine.errors import UserError

SOURCES = ("torchvision", "msra", "ours")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
    parser.add_argument("--src", required=True, help="input file (.pth state dict / checkpoint, .pkl, .safetensors)")
    parser.add_argument("--dst", required=True, help="output: .pth (our checkpoint) or .safetensors")
    parser.add_argument("--arch", help="registry name (default: recorded in the file or guessed from its keys)")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option the weights need and the file does not record (e.g. width=32)")
    parser.add_argument("--to", choices=["ours", "torchvision"], default="ours",
                        help="torchvision: write a bare state dict that torchvision.models.* load strictly")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    weights = backbones.read_weights(args.src)
    weights.options.update(parse_key_values(args.option))
    if args.source == "msra" and not args.src.endswith(".pkl"):
        raise UserError(f"{args.src}: MSRA / Caffe2 model-zoo weights are .pkl files")
    arch = args.arch or weights.arch or backbones.guess_arch(weights.state_dict)
    if arch is None:
        raise UserError(f"{args.src}: cannot tell the architecture; give --arch (one of resnet18..152, vgg16/19)")
    head = weights.state_dict.get("fc.weight", weights.state_dict.get("classifier.6.weight"))
    model = backbones.build_model(arch, None if head is None else head.shape[0], **weights.options)
    backbones.load_weights(model, weights, arch=arch)  # proves the weights fit before anything is written
    if args.to == "torchvision":
        if weights.options.get("stride_in_1x1") or weights.input_format:
            raise UserError(f"{args.src}: {arch} with {weights.options or weights.input_format} has no torchvision "
                            "equivalent (torchvision strides the 3x3 and feeds normalised RGB)")
        out = save_checkpoint({k: v for k, v in model.state_dict().items()}, Path(args.dst))
    else:
        weights.arch = arch
        out = save_weights(weights, args.dst, arch)
    extra = f", options {weights.options}" if weights.options else ""
    fmt = f", input {weights.input_format}" if weights.input_format else ""
    print(f"{arch}{extra}{fmt}: {len(weights.state_dict)} tensors -> {out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(run_cli(main))
