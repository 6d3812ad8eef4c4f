#!/usr/bin/env python
"""Look at a detection dataset before training: counts, box sizes, the anchors' fit, and images drawn with their boxes.

    python tools/browse_data.py --dataset voc --data data/raccoon --classes raccoon --train-split train.txt \
        --val-split test.txt --config custom_R18_C4_cpu --output runs/browse
    python tools/browse_data.py --dataset yolo --data data/mine/data.yaml --output runs/browse --images 16

Prints per split the images (and those without objects), boxes per class, duplicate and tiny boxes, box sizes and
aspect ratios at the size the recipe's model sees them, and how many boxes no anchor shape of the recipe covers
at IoU >= 0.5; with --output also `statistics_<split>.png`, `statistics.json` and `<split>/` images drawn with
their ground truth. --config is the recipe you will train with (default: the toolkit's defaults, the paper's).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import time
from collections.abc import Sequence

import numpy as np

from detection.data.browse import dataset_statistics, plot_statistics, report_lines
from detection.data.catalog import DATA_FLAG_KEYS, add_data_arguments, build_detection_dataset
from detection.data.common import load_image
from detection.train import DEFAULTS, LIMITS, OPEN_KEYS
from detection.visualize import draw_detections, save_image
from engine.cli import ToolParser, add_recipe_arguments, non_negative_int, run_cli
from engine.config import load_config
from engine.errors import UserError
from engine.logs import get_logger

log = get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    add_data_arguments(parser)
    add_recipe_arguments(parser, "detection", "custom_R18_C4_cpu")
    parser.add_argument("--output", help="folder for the pictures, statistics.json and drawn images")
    parser.add_argument("--images", type=non_negative_int, default=8, help="images drawn per split (default 8)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="which images are drawn")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. model.min_size=[800]")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(DEFAULTS, args.config, args.overrides, open_keys=OPEN_KEYS, limits=LIMITS)
    data = {key: getattr(args, flag) for flag, key in DATA_FLAG_KEYS.items()}
    data["dataset"] = data["dataset"] or "coco"
    start = time.perf_counter()
    train = build_detection_dataset(data, train=False, role="train")
    splits = {"train": train, "val": build_detection_dataset(data, train=False, class_names=train.class_names,
                                                              optional=True)}
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: --output is not empty; give a new folder")
    summary = {}
    for split, dataset in splits.items():
        if dataset is None:
            continue
        stats = dataset_statistics(dataset, cfg.model)
        log.info(f"{split}:\n  " + "\n  ".join(report_lines(stats)))
        summary[split] = {k: v for k, v in stats.items() if not k.startswith("_")}
        if out is None:
            continue
        plot_statistics(stats, out / f"statistics_{split}.png", title=f"{split}: {stats['images']} images, "
                        f"{stats['boxes']} boxes")
        rng = np.random.default_rng(args.seed)
        for i in sorted(rng.choice(len(dataset), min(args.images, len(dataset)), replace=False).tolist()):
            rec = dataset.records[i]
            drawn = draw_detections(load_image(dataset.image_path(i)), rec.boxes, rec.labels, None, dataset.class_names)
            save_image(drawn, out / split / f"{Path(rec.name).stem}.jpg")
    if out is not None:
        (out / "statistics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        log.info(f"pictures, statistics.json and drawn images -> {out}")
    log.info(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
