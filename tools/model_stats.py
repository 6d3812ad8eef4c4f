#!/usr/bin/env python
"""Parameters and multiply-adds of a registered network, or of all of them beside the paper's figures.

    python tools/model_stats.py --arch resnet50 --option stride_in_1x1=true --json
    python tools/model_stats.py --table
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
from collections.abc import Sequence

import backbones
from engine.cli import ToolParser, positive_int, run_cli
from engine.config import parse_key_values


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':<18}{'params':>12}{'paper':>10}{'diff':>8}{'mult-adds':>12}{'paper':>10}{'diff':>8}  options",
             "-" * 94]

    def fig(row: dict, key: str, scale: float, unit: str) -> str:
        ours = f"{row[key] / scale:.2f}{unit}"
        if f"paper_{key}" not in row:
            return f"{ours:>12}{'':>10}{'':>8}"
        paper = f"{row[f'paper_{key}'] / scale:.2f}{unit}"
        return f"{ours:>12}{paper:>10}{row[f'{key}_rel_diff']:>+8.1%}"

    for row in rows:
        opts = ",".join(f"{k}={v}" for k, v in row["options"].items())
        lines.append(f"{row['arch']:<18}{fig(row, 'params', 1e6, 'M')}{fig(row, 'macs', 1e9, 'G')}  {opts}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--arch", choices=None, help=f"one of: {', '.join(backbones.list_models())}")
    parser.add_argument("--input-size", type=positive_int, help="square input side (default: 224 ImageNet, 32 CIFAR)")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option, e.g. shortcut=A or stride_in_1x1=true (repeatable)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: params, macs (multiply-adds, the paper's 'FLOPs')")
    parser.add_argument("--table", action="store_true", help="all models beside the paper's figures")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.table:
        rows = backbones.paper_table()
        print(json.dumps(rows) if args.json else format_table(rows))
        return 0
    if not args.arch:
        parser.error("give --arch NAME or --table")
    stats = backbones.model_stats(args.arch, args.input_size, **parse_key_values(args.option))
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"{stats['arch']}: {stats['params']:,} parameters, {stats['macs'] / 1e9:.3f}G multiply-adds "
              f"at {stats['input_size']}x{stats['input_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
