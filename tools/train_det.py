#!/usr/bin/env python
"""Train a Faster R-CNN detector (ResNet C4 or VGG-16) on COCO, PASCAL VOC or the synthetic shapes set.

    python tools/train_det.py --backbone resnet101 --dataset coco --data /data/coco \
        --weights runs/r101/model_final.pth --config configs/detection/coco_R101_C4.yaml --output runs/det
    torchrun --nproc_per_node 8 tools/train_det.py --config configs/detection/voc0712_R101_C4.yaml \
        --data /data/VOCdevkit --weights resnet101-torchvision.pth --output runs/voc
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from detection.data.catalog import DATASETS
from detection.inference import flat_metrics
from detection.train import DEFAULTS, OPEN_KEYS, train_detector
from engine.cli import run_cli
from engine.config import load_config

FLAG_KEYS = {"backbone": "model.backbone", "weights": "model.weights", "dataset": "data.dataset",
             "data": "data.root", "workers": "data.workers", "max_iter": "solver.max_iter",
             "ims_per_batch": "solver.ims_per_batch", "accumulate": "solver.accumulate", "lr": "solver.lr",
             "device": "train.device", "amp": "train.amp", "eval_period": "train.eval_period", "seed": "train.seed"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help="YAML recipe (configs/detection/*.yaml)")
    parser.add_argument("--output", required=True, help="run directory")
    parser.add_argument("--backbone", help="registry name: resnet18..152, plain18/34, vgg16/19")
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--data", help="COCO/shapes root (annotations/, <split>/) or the VOCdevkit folder")
    parser.add_argument("--weights", help="ImageNet weights: a train_cls.py model_final.pth or a torchvision file")
    parser.add_argument("--max-iter", type=int)
    parser.add_argument("--ims-per-batch", type=int, help="images per iteration over all processes")
    parser.add_argument("--accumulate", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"])
    parser.add_argument("--workers", type=int)
    parser.add_argument("--eval-period", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model.roi.batch_size_per_image=64")
    args = parser.parse_intermixed_args(argv)
    flags = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    if args.no_progress:
        flags.append("train.progress=false")
    cfg = load_config(DEFAULTS, args.config, [*flags, *args.overrides], open_keys=OPEN_KEYS)
    results = train_detector(cfg, args.output, resume=args.resume)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in flat_metrics(results).items()
                      if k.endswith(("mAP", "_AP", "_AP50")))
    print(f"final: {shown} -> {args.output}/model_final.pth")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
