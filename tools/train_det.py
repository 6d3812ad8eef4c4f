#!/usr/bin/env python
"""Train a Faster R-CNN detector (ResNet C4 or FPN, VGG-16) on COCO, PASCAL VOC, your own data or the shapes set.

    # the paper's recipes on the public sets
    python tools/train_det.py --config configs/detection/voc0712_R101_C4.yaml --data /data/VOCdevkit \
        --weights runs/r101/model_final.pth --output runs/voc
    torchrun --nproc_per_node 8 tools/train_det.py --config configs/detection/coco_R101_C4.yaml \
        --data /data/coco --weights resnet101-torchvision.pth --output runs/coco --amp bf16
    # your own COCO json (any names; images default to the json's folder) or VOC-layout folder
    python tools/train_det.py --dataset coco --train-ann data/train.json --train-images data/images \
        --val-ann data/val.json --val-images data/images --weights r50.pth --backbone resnet50 --output runs/mine
    python tools/train_det.py --dataset voc --data data/raccoon --classes raccoon --train-split train \
        --val-split test --weights r50.pth --backbone resnet50 --eval-period 500 --output runs/raccoon
    # fine-tune a trained detector on other classes; continue a run where it stopped
    python tools/train_det.py ... --weights runs/coco/model_final.pth --output runs/finetuned
    python tools/train_det.py --output runs/raccoon --resume
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

from detection.data.catalog import DATA_FLAG_KEYS, add_data_arguments
from detection.inference import flat_metrics
from detection.train import DEFAULTS, LIMITS, OPEN_KEYS, RESUME_MAY_CHANGE, train_detector
from engine.cli import ToolParser, add_recipe_arguments, run_cli, run_config
from engine.logs import get_logger
from engine.precision import AMP_CHOICES

FLAG_KEYS = {"backbone": "model.backbone", "weights": "model.weights",
             **{flag: f"data.{key}" for flag, key in DATA_FLAG_KEYS.items()}, "workers": "data.workers",
             "max_iter": "solver.max_iter", "ims_per_batch": "solver.ims_per_batch", "accumulate": "solver.accumulate",
             "lr": "solver.lr", "device": "train.device", "amp": "train.amp", "eval_period": "train.eval_period",
             "seed": "train.seed", "progress": "train.progress"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    add_recipe_arguments(parser, "detection", "coco_R101_C4")
    parser.add_argument("--output", required=True, help="run folder (must not hold another run unless --resume)")
    parser.add_argument("--backbone", help="registry name: resnet18..152, plain18/34, vgg16/19")
    add_data_arguments(parser)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--weights", help="initialisation: ImageNet classifier weights (train_cls.py model_final.pth, "
                        "torchvision, timm, MSRA), or a whole detector (model_final.pth / model_best.pth of "
                        "train_det.py, detectron2 C4) to fine-tune")
    parser.add_argument("--max-iter", type=int)
    parser.add_argument("--ims-per-batch", type=int, help="images per iteration over all processes")
    parser.add_argument("--accumulate", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device")
    parser.add_argument("--amp", choices=AMP_CHOICES)
    parser.add_argument("--eval-period", type=int, help="evaluate every N iterations and keep model_best.pth")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="continue the run in --output (with its saved config) from its last checkpoint, or CKPT")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="plain periodic lines instead of a progress bar")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model.roi.batch_size_per_image=64")
    args = parser.parse_intermixed_args(argv)
    cfg = run_config(DEFAULTS, args, FLAG_KEYS, OPEN_KEYS, RESUME_MAY_CHANGE, LIMITS)
    results = train_detector(cfg, args.output, resume=args.resume)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in flat_metrics(results).items()
                      if k.endswith(("mAP", "_AP", "_AP50")))
    get_logger().info(f"final: {shown or 'no evaluation'} -> {args.output}/model_final.pth")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
