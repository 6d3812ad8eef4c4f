#!/usr/bin/env python
"""Write the synthetic shapes detection set (COCO format) that every tool can run on without data.

    python tools/make_shapes.py --output data/shapes --num-train 300 --num-val 50 --seed 0 [--crops data/crops]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

from detection.data.shapes import make_crops, make_shapes
from engine.cli import ToolParser, non_negative_int, positive_int, run_cli
from engine.errors import UserError
from engine.logs import get_logger

log = get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output", "--out", dest="output", required=True,
                        help="output folder (train/, val/, annotations/)")
    parser.add_argument("--num-train", type=positive_int, default=300)
    parser.add_argument("--num-val", type=positive_int, default=50)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--min-side", type=positive_int, default=160, help="smallest image side in pixels")
    parser.add_argument("--max-side", type=positive_int, default=256, help="largest image side in pixels")
    parser.add_argument("--crops", help="also write an ImageNet-layout classification set of object crops here")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if not 32 <= args.min_side <= args.max_side:
        raise UserError(f"--min-side {args.min_side} / --max-side {args.max_side}: need 32 <= --min-side <= --max-side")
    files = make_shapes(args.output, args.num_train, args.num_val, args.seed, min_side=args.min_side,
                        max_side=args.max_side)
    for split, path in files.items():
        log.info(f"{split}: {path}")
    if args.crops:
        counts = make_crops(args.output, args.crops, seed=args.seed)
        log.info(f"crops: {args.crops} ({counts['train']} train, {counts['val']} val)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
