#!/usr/bin/env python
"""Overlay the training/validation error curves of several runs (the paper's Fig. 4 / Fig. 6).

    python tools/plot_curves.py runs/plain18 runs/plain34 runs/resnet18 runs/resnet34 --output fig4.png
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Sequence

from engine.cli import ToolParser, run_cli
from engine.errors import UserError
from engine.logs import get_logger
from engine.metrics import METRICS_FILE, plot_curves, read_metrics

log = get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("runs", nargs="+", help="run directories of train_cls.py / train_det.py")
    parser.add_argument("--labels", nargs="*", help="legend labels (default: directory names)")
    parser.add_argument("--key", default="error", help="metric to plot (default: error)")
    parser.add_argument("--output", default="curves.png")
    parser.add_argument("--title", default="")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"{len(labels)} labels for {len(args.runs)} runs")
    runs = {}
    for label, run in zip(labels, args.runs, strict=True):
        records = read_metrics(run)
        if not records:
            raise UserError(f"{Path(run) / METRICS_FILE}: no metrics (is this a run directory?)")
        runs[label] = records
    out = plot_curves(runs, args.output, key=args.key, ylabel=f"{args.key} (%)" if "error" in args.key else args.key,
                      title=args.title)
    log.info(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
