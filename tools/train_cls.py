#!/usr/bin/env python
"""Train a classifier of the registry (ImageNet, CIFAR-10 or synthetic data).

    python tools/train_cls.py --arch resnet101 --dataset imagenet --data /data/imagenet --output runs/r101
    python tools/train_cls.py --config configs/classification/cifar_resnet110.yaml --data /data/cifar10 \
        --output runs/c110 solver.lr=0.05
    torchrun --nproc_per_node 8 tools/train_cls.py --config configs/classification/imagenet_resnet50.yaml ...
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

from classification.config import DEFAULTS, LIMITS, OPEN_KEYS, RESUME_MAY_CHANGE
from classification.train import train_classifier
from engine.cli import ToolParser, add_recipe_arguments, run_cli, run_config
from engine.logs import get_logger
from engine.precision import AMP_CHOICES

# flag -> config key; given flags override the recipe, `key=value` arguments override both
FLAG_KEYS = {
    "arch": "model.arch", "weights": "model.weights", "dataset": "data.dataset", "data": "data.root",
    "workers": "data.workers", "max_iter": "solver.max_iter", "epochs": "solver.epochs",
    "batch_size": "solver.batch_size", "accumulate": "solver.accumulate", "lr": "solver.lr",
    "device": "train.device", "amp": "train.amp", "eval_period": "train.eval_period",
    "recompute_bn": "train.recompute_bn", "seed": "train.seed", "channels_last": "train.channels_last",
    "compile": "train.compile", "skip_bad_images": "data.skip_bad_images", "progress": "train.progress",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    add_recipe_arguments(parser, "classification", "cifar_resnet110")
    parser.add_argument("--output", required=True,
                        help="run folder: checkpoints, metrics, plots (must not hold another run unless --resume)")
    parser.add_argument("--arch")
    parser.add_argument("--dataset", choices=["imagenet", "cifar10", "synthetic"])
    parser.add_argument("--data", help="dataset root (ImageNet: with train/ and val/; CIFAR: cifar-10-batches-py)")
    parser.add_argument("--weights", help="initial weights (our checkpoint or a torchvision state dict)")
    parser.add_argument("--max-iter", type=int)
    parser.add_argument("--epochs", type=float, help="instead of --max-iter")
    parser.add_argument("--batch-size", type=int, help="global batch size (over all processes)")
    parser.add_argument("--accumulate", type=int, help="gradient accumulation steps per iteration")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", help="auto, cpu, cuda")
    parser.add_argument("--amp", choices=AMP_CHOICES)
    parser.add_argument("--channels-last", action="store_true", default=None)
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--eval-period", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--skip-bad-images", action="store_true", default=None, help="warn and count unreadable images")
    parser.add_argument("--recompute-bn", type=int, metavar="N", help="re-estimate BN statistics on N batches")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="continue the run in --output (with its saved config) from its last checkpoint, or CKPT")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="plain periodic lines instead of a progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. solver.lr=0.05")
    args = parser.parse_intermixed_args(argv)

    cfg = run_config(DEFAULTS, args, FLAG_KEYS, OPEN_KEYS, RESUME_MAY_CHANGE, LIMITS)
    metrics = train_classifier(cfg, args.output, resume=args.resume)
    get_logger().info(f"final: top-1 error {metrics['error']:.2f}%  top-5 error {metrics['top5_error']:.2f}%  "
                      f"({metrics['count']} images) -> {args.output}/model_final.pth")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
