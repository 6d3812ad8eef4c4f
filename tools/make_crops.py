#!/usr/bin/env python
"""Cut the objects of a detection dataset (with context) and background into an ImageNet-layout classification set.

The paper's hand-off on your own data, without ImageNet weights at hand: pre-train a classifier on the crops,
then start the detector from it.

    python tools/make_crops.py --dataset voc --data data/raccoon --classes raccoon --train-split train.txt \
        --output data/raccoon_crops
    python tools/train_cls.py --config demo/shapes_crops_resnet18 --data data/raccoon_crops --output runs/crops
    python tools/train_det.py --config custom_R18_C4_cpu --dataset voc --data data/raccoon --classes raccoon \
        --train-split train.txt --val-split test.txt --weights runs/crops/model_final.pth --output runs/raccoon

Crops come from the training images only: `--val-fraction` of them are held out as the crops' `val/` split
(never trained on by the classifier); the detector's evaluation images are not read.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

import numpy as np

from detection.data.catalog import DATA_FLAG_KEYS, add_data_arguments, build_detection_dataset
from detection.data.crops import split_images, write_crops
from engine.cli import ToolParser, non_negative_int, positive_int, run_cli
from engine.errors import UserError
from engine.logs import get_logger

log = get_logger()


def fraction_below_one(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    add_data_arguments(parser)
    parser.add_argument("--output", required=True, help="folder for train/<class>/ and val/<class>/ (must not exist)")
    parser.add_argument("--size", type=positive_int, default=64, help="side of the square crops in pixels")
    parser.add_argument("--context", type=float, default=0.15,
                        help="grow each box by this fraction of its width / height on each side")
    parser.add_argument("--backgrounds", type=non_negative_int, default=1,
                        help="background crops per image (squares overlapping no object)")
    parser.add_argument("--val-fraction", type=fraction_below_one, default=0.1,
                        help="training images held out for the crops' val/ split")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if not 0 <= args.context <= 2:
        raise UserError(f"--context must be between 0 and 2, got {args.context}")
    out = Path(args.output)
    if out.exists():
        raise UserError(f"{out}: --output already exists; give a new folder")
    data = {key: getattr(args, flag) for flag, key in DATA_FLAG_KEYS.items()}
    data["dataset"] = data["dataset"] or "coco"
    dataset = build_detection_dataset(data, train=True)
    rng = np.random.default_rng(args.seed)
    train_images, val_images = split_images(dataset, args.val_fraction, rng)
    options = {"size": args.size, "context": args.context, "backgrounds_per_image": args.backgrounds, "rng": rng}
    counts = {split: write_crops(dataset, out / split, images, **options)
              for split, images in (("train", train_images), ("val", val_images))}
    train_has, val_has = ({name for name, n in counts[split].items() if n} for split in ("train", "val"))
    if train_has != val_has:
        raise UserError(f"{out}: {', '.join(sorted(train_has ^ val_has))} has crops in only one of train/ and val/ "
                        "(too few images of it); raise --val-fraction, or leave it out with --classes")
    for split, count in counts.items():
        log.info(f"{split}: {sum(count.values())} crops in {out / split} ("
                 + ", ".join(f"{name} {n}" for name, n in count.items() if n) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
