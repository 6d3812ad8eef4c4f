#!/usr/bin/env python
"""Top-1 / top-5 error of a classifier: centre crop, 10-crop or multi-scale fully-convolutional testing.

    python tools/eval_cls.py --checkpoint runs/r50/model_final.pth     # the test set and transform it recorded
    python tools/eval_cls.py --checkpoint runs/r50/model_final.pth --dataset imagenet --data /data/imagenet --ten-crop
    python tools/eval_cls.py --arch resnet50 --weights resnet50-torchvision.pth --dataset imagenet \
        --data /data/imagenet --multi-scale --json r50.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
from collections.abc import Sequence

import backbones
from classification.config import DEFAULTS, LIMITS, OPEN_KEYS
from classification.evaluate import eval_loader, evaluate, load_classifier
from engine.cli import ToolParser, non_negative_int, positive_int, run_cli
from engine.config import load_config, parse_key_values
from engine.distributed import init_distributed
from engine.errors import UserError
from engine.logs import get_logger
from engine.precision import AMP_CHOICES


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a classifier this toolkit trained (train_cls.py model_final.pth, "
                        "model_best.pth or checkpoint_*.pth)")
    source.add_argument("--weights", help="classifier weights from elsewhere (torchvision, timm, MSRA), evaluated as "
                        "they are")
    parser.add_argument("--arch", help="registry name (read from our checkpoints when omitted)")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dataset", choices=["imagenet", "cifar10", "synthetic"],
                        help="default: the one train_cls.py recorded in the weights")
    parser.add_argument("--data", help="dataset root (default: recorded in the weights)")
    parser.add_argument("--split", help="split to evaluate (default: val for ImageNet, test for CIFAR-10)")
    views = parser.add_mutually_exclusive_group()
    views.add_argument("--ten-crop", action="store_true")
    views.add_argument("--multi-scale", action="store_true", help="shorter sides 224, 256, 384, 480, 640")
    parser.add_argument("--batch-size", type=positive_int, default=50)
    parser.add_argument("--workers", type=non_negative_int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none", help="run the network in bf16/fp16")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", help="write the metrics to this file")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data config overrides (see train_cls)")
    args = parser.parse_intermixed_args(argv)

    source = args.checkpoint or args.weights
    weights = backbones.read_weights(source)
    ours = weights.format == "ours" and weights.arch is not None
    if args.checkpoint and not ours:
        raise UserError(f"{source}: not a classifier this toolkit trained ({weights.format} weights); give it with "
                        "--weights")
    if args.weights and ours:
        raise UserError(f"{source}: a classifier this toolkit trained; give it with --checkpoint (--weights is for "
                        "weights from elsewhere)")
    recorded = weights.record.get("test", {}).get("data")
    if args.dataset is None and recorded is None:
        raise UserError(f"{source}: records no test set (not a train_cls.py checkpoint); give --dataset")
    given = (("data", f"the test data recorded in {source}", recorded),
             ("data.dataset", "--dataset", args.dataset), ("data.root", "--data", args.data),
             ("data.workers", "--workers", args.workers), ("train.device", "--device", args.device))
    flags = {key: (flag, value) for key, flag, value in given if value is not None}
    cfg = load_config(DEFAULTS, None, args.overrides, open_keys=OPEN_KEYS, flags=flags, limits=LIMITS)
    dist = init_distributed(args.device)
    model, arch = load_classifier(weights, args.arch, parse_key_values(args.option))
    mode = "ten_crop" if args.ten_crop else "multi_scale" if args.multi_scale else "center"
    loader = eval_loader(cfg, dist, mode, args.split, args.batch_size)
    metrics = evaluate(model.to(dist.device), loader, dist.device, mode, progress=not args.no_progress, amp=args.amp)
    metrics.update(arch=arch, mode=mode, weights=str(source))
    if dist.is_main:
        get_logger().info(f"{arch} ({mode}): top-1 error {metrics['error']:.2f}%  top-5 error "
                          f"{metrics['top5_error']:.2f}%  on {metrics['count']} images")
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
