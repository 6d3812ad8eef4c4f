"""`resnet-toolkit <tool> [flags]`: one command for every tool (the console script `pip install` makes).

    resnet-toolkit --help                 # the tools
    resnet-toolkit train-det --help       # one tool's own help
    resnet-toolkit train-det --config coco_R101_C4 --data /data/coco --output runs/coco
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from engine.cli import run_cli

# subcommand -> module of tools/ (each has main(argv) and a docstring whose first line says what it does)
TOOLS = {
    "train-cls": "train_cls", "eval-cls": "eval_cls", "train-det": "train_det", "eval-det": "eval_det",
    "predict": "predict", "export": "export", "convert-weights": "convert_weights", "model-stats": "model_stats",
    "make-shapes": "make_shapes", "make-crops": "make_crops", "convert-data": "convert_data",
    "browse-data": "browse_data", "demo": "demo", "plot-curves": "plot_curves",
    "analyze-responses": "analyze_responses",
}


def usage() -> str:
    lines = ["usage: resnet-toolkit <tool> [flags]   (resnet-toolkit <tool> --help for its flags)", "", "tools:"]
    for name, module in TOOLS.items():
        doc = (importlib.import_module(f"tools.{module}").__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<18} {doc[0] if doc else ''}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in TOOLS:
        print(f"error: unknown tool {name!r}; one of {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    tool = importlib.import_module(f"tools.{TOOLS[name]}")
    program = sys.argv[0]
    sys.argv[0] = f"resnet-toolkit {name}"  # what the tool's --help and errors call it
    try:
        return run_cli(tool.main, rest)
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
