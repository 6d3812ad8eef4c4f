#!/usr/bin/env python
"""Fig. 7 of the paper: std of each 3x3 layer's response for plain nets vs ResNets.

    python tools/analyze_responses.py --checkpoint runs/plain20/model_final.pth runs/resnet20/model_final.pth \
        --dataset cifar10 --data /data/cifar10 --output fig7.png
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
from collections.abc import Sequence
from itertools import islice

from classification.analysis import plot_responses, response_stds
from classification.config import DEFAULTS, OPEN_KEYS
from classification.evaluate import eval_loader, load_classifier
from engine.cli import ToolParser, positive_int, run_cli
from engine.config import load_config
from engine.distributed import init_distributed
from engine.errors import UserError
from engine.logs import get_logger

log = get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--checkpoint", nargs="+", required=True,
                        help="the classifiers this toolkit trained (model_final.pth of each run)")
    parser.add_argument("--labels", nargs="*", help="legend labels (default: the architectures)")
    parser.add_argument("--dataset", required=True, choices=["imagenet", "cifar10", "synthetic"])
    parser.add_argument("--data", help="dataset root")
    parser.add_argument("--split")
    parser.add_argument("--batches", type=positive_int, default=20, help="validation batches to measure on")
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="responses.png", help="PNG; the numbers go beside it as .json")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.checkpoint):
        raise UserError(f"--labels: {len(args.labels)} labels for {len(args.checkpoint)} checkpoints")
    flags = [f"data.dataset={args.dataset}", f"train.device={args.device}"]
    if args.data:
        flags.append(f"data.root={args.data}")
    cfg = load_config(DEFAULTS, None, flags, open_keys=OPEN_KEYS)
    dist = init_distributed(args.device)
    loader = eval_loader(cfg, dist, "center", args.split, args.batch_size)
    results = {}
    for i, path in enumerate(args.checkpoint):
        model, arch = load_classifier(path)
        label = args.labels[i] if args.labels else arch
        results[label] = response_stds(model.to(dist.device), islice(loader, args.batches), dist.device)
        log.info(f"{label}: {len(results[label])} layers, mean std {sum(results[label]) / len(results[label]):.3f}")
    out = plot_responses(results, args.output)
    Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    log.info(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
