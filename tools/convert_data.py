#!/usr/bin/env python
"""Write a detection dataset the tools read in another layout: COCO json, VOC folder, YOLO (ultralytics) or LabelMe.

    python tools/convert_data.py --dataset voc --data data/raccoon --classes raccoon --train-split train.txt \
        --val-split test.txt --to yolo --output data/raccoon_yolo
    python tools/convert_data.py --dataset yolo --data data/mine/data.yaml --to coco --output data/mine_coco

The training split is written as `train`, the evaluation split (when there is one) as `val`; the images are
copied (`--link`: symlinked). Boxes keep their pixel coordinates exactly; YOLO cannot hold ignored objects (VOC
difficult, COCO crowds), which are left out and counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

from detection.data.catalog import DATA_FLAG_KEYS, add_data_arguments, build_detection_dataset
from detection.data.convert import LAYOUTS, write_dataset
from engine.cli import ToolParser, run_cli
from engine.errors import UserError
from engine.logs import get_logger

log = get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    add_data_arguments(parser)
    parser.add_argument("--to", required=True, choices=LAYOUTS, help="the layout to write")
    parser.add_argument("--output", required=True, help="a new folder")
    parser.add_argument("--link", action="store_true", help="symlink the images instead of copying them")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.exists():
        raise UserError(f"{out}: --output already exists; give a new folder")
    data = {key: getattr(args, flag) for flag, key in DATA_FLAG_KEYS.items()}
    data["dataset"] = data["dataset"] or "coco"
    train = build_detection_dataset(data, train=False, role="train")  # every image, ignored objects kept
    val = build_detection_dataset(data, train=False, class_names=train.class_names, optional=True)
    written: list[str] = []
    for split, dataset in (("train", train), ("val", val)):
        if dataset is None:
            continue
        path = write_dataset(dataset, args.to, out, split, args.link, written)
        written.append(split)
        boxes = sum(len(r.labels) for r in dataset.records)
        log.info(f"{split}: {len(dataset)} images, {boxes} boxes -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
