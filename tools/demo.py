#!/usr/bin/env python
"""The embedded end-to-end demo (CPU, minutes): data -> classifier -> detector -> evaluation -> report.

1. `make_shapes.py`: the synthetic shapes detection set, and an ImageNet-layout set of its object crops.
2. `train_cls.py`: a half-width ResNet-18 on the crops (the stand-in for ImageNet pre-training).
3. `train_det.py`: a ResNet-18 C4 Faster R-CNN on the shapes set (`--head fpn`: with a feature pyramid),
   initialised from that classifier.
4. `eval_det.py`: the detector under the COCO and VOC07 metrics.
5. (`--compare-scratch`) the same detector trained from scratch, to show what pre-training bought.
6. `REPORT.md` with the metrics table and the pictures, under the output folder.

    python tools/demo.py [--output runs/demo] [--seed 0] [--det-iters 2000] [--compare-scratch] [--head fpn]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import os
import shutil
import time
from collections.abc import Sequence

import torch

from engine.cli import ToolParser, non_negative_int, positive_int, run_cli
from engine.errors import UserError
from engine.logs import get_logger
from engine.precision import AMP_CHOICES
from tools import eval_det, make_shapes, train_cls, train_det

log = get_logger()



def step(title: str, tool, argv: list[str], timings: dict[str, float]) -> None:
    log.info(f"\n== {title}: {tool.__name__}.py {' '.join(argv)}")
    start = time.perf_counter()
    code = tool.main(argv)
    timings[title] = time.perf_counter() - start
    if code:
        raise UserError(f"demo step '{title}' failed (exit code {code})")


DEMO_ENTRIES = {"data", "classifier", "detector", "detector_scratch", "eval", "REPORT.md"}


def clear_previous_demo(out: Path) -> None:
    """Remove an earlier demo's outputs from `out`; a folder holding anything else is not the demo's to delete."""
    if not out.exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES) if out.is_dir() else [out.name]
    if foreign:
        raise UserError(f"{out}: holds {', '.join(foreign[:3])}, which the demo did not write; give another --output")
    shutil.rmtree(out)


def report(out: Path, timings: dict[str, float], scratch: bool) -> Path:
    det = json.loads((out / "eval" / "metrics.json").read_text())
    cls = json.loads((out / "classifier" / "metrics.json").read_text())
    rows = [("pre-trained classifier (crops val)", f"top-1 error {cls['error']:.2f}%", "")]
    rows.append(("detector, pre-trained backbone", f"VOC07 mAP {det['voc07']['mAP']:.2f}",
                 f"COCO AP {det['coco']['AP']:.2f} / AP50 {det['coco']['AP50']:.2f}"))
    s = json.loads((out / "detector_scratch" / "metrics.json").read_text()) if scratch else {}
    if scratch:
        rows.append(("detector, from scratch (same recipe)", f"VOC07 mAP {s['voc07']['mAP']:.2f}",
                     f"COCO AP {s['coco']['AP']:.2f} / AP50 {s['coco']['AP50']:.2f}"))
    val_images = json.loads((out / "data" / "shapes" / "annotations" / "instances_val.json").read_text())["images"]
    lines = ["# Demo report", "",
             f"What `tools/demo.py` did, and what its numbers mean. The task is synthetic: images of ellipses, "
             f"rectangles and triangles of every size and aspect on cluttered, textured backgrounds, some "
             f"overlapping, some images empty ({len(val_images)} validation images, written by "
             "`tools/make_shapes.py`). A small classifier is first trained on crops of those objects and of "
             "background, the stand-in for the paper's ImageNet pre-training; its weights start the "
             "detector's backbone, as the paper's ImageNet models start Faster R-CNN's.", "",
             "| model | metric | COCO |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "- **VOC07 mAP** (PASCAL VOC 2007's 11-point AP at IoU 0.5, averaged over the 3 classes) is the "
              "paper's Table 7 metric; **COCO AP** averages AP over IoU 0.5..0.95 and so also rewards tight "
              "boxes (Table 8's mAP@[.5,.95]); AP50 is COCO's AP at IoU 0.5.",
              "- One run is one draw: README.md and docs/benchmarks.md state the mean, worst and best over seeds. "
              "A run differs from those by the seed and by the machine (another CPU, or thread count, rounds "
              "differently and takes another path). The 11-point VOC07 metric loses up to 3 points when a "
              "single object of a class is never found; COCO AP has no such step and is the steadier figure.",
              "- What pre-training bought: " + (
                  f"the same detector from scratch, same data and iterations, reaches VOC07 mAP "
                  f"{s['voc07']['mAP']:.1f} against {det['voc07']['mAP']:.1f}." if scratch else
                  "run with `--compare-scratch` to train the same detector from scratch beside it (docs/"
                  "benchmarks.md has the 5-seed figures)."), ""]
    lines += ["| step | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "Files: [classifier curves](classifier/curves.png), [detector loss](detector/loss.png), "
              "[detector mAP during training](detector/voc07_mAP.png), [PR curves](eval/pr_curves_voc07.png), "
              "[per-class AP](eval/per_class_voc07.md), [COCO results json](eval/coco_results.json), "
              "[drawn detections](detector/detections/), TensorBoard logs under `classifier/tensorboard` and "
              "`detector/tensorboard`.", "",
              "## Classifier training (Fig. 4 style)", "", "![classifier curves](classifier/curves.png)", "",
              "## Detector", "", "![loss](detector/loss.png) ![mAP](detector/voc07_mAP.png)", "",
              "![PR curves](eval/pr_curves_voc07.png)", "", "Per class (VOC07 AP):", "",
              (out / "eval" / "per_class_voc07.md").read_text()]
    if (out / "detector" / "analysis" / "analysis.md").is_file():
        lines += ["## Why it errs", "", "TIDE's breakdown of the AP lost (each error type fixed alone) and the "
                  "confusion matrix of the final detector on the validation images; the whole analysis, with the score "
                  "threshold of best F1 per class and the worst cases drawn: "
                  "[detector/analysis/analysis.md](detector/analysis/analysis.md).", "",
                  "![TIDE](detector/analysis/tide.png) ![confusion](detector/analysis/confusion.png)", ""]
    drawn = sorted((out / "detector" / "detections").glob("*.png"))
    lines += ["## Detections on validation images", "", "Score >= 0.5, drawn by the training run:", ""]
    lines += [f"![{p.stem}](detector/detections/{p.name})" for p in drawn] or ["(none drawn)"]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def default_workers(device: str) -> int:
    """Loader processes for the demo: none when a CPU of <= 2 cores also trains, since workers there take cores
    from torch's compute threads (2 workers cost the detector's step 10-15% and the classifier's 8% on two cores,
    docs/benchmarks.md); 2 otherwise."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if on_cpu and cores <= 2 else 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--num-train", type=positive_int, default=600)
    parser.add_argument("--num-val", type=positive_int, default=200)
    parser.add_argument("--cls-iters", type=positive_int, default=300)
    parser.add_argument("--det-iters", type=positive_int, default=2000)
    parser.add_argument("--compare-scratch", action="store_true", help="also train the detector from scratch")
    parser.add_argument("--head", choices=["c4", "fpn"], default="c4",
                        help="the paper's C4 detector (default) or one with a feature pyramid")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help="data loader processes (default: 2, or 0 when training on a CPU of <= 2 cores)")
    parser.add_argument("--small", action="store_true", help="tiny networks and images (a smoke test, seconds)")
    parser.add_argument("--device", default="auto", help="where the classifier and detectors train and run")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none", help="train and run in bf16/fp16")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="one seed for the data, the classifier and the detectors (default 0)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = default_workers(args.device)
    out = Path(args.output)
    clear_previous_demo(out)
    common = ["--workers", str(args.workers), "--device", args.device, "--amp", args.amp, "--seed", str(args.seed)] + (
        ["--no-progress"] if args.no_progress else [])
    timings: dict[str, float] = {}
    shapes, crops = out / "data" / "shapes", out / "data" / "crops"
    sides = ["--min-side", "96", "--max-side", "128"] if args.small else []
    cls_small = ["model.options.width=8", "solver.batch_size=16"] if args.small else []
    det_small = ["model.backbone_options.width=8", "model.min_size=[96]", "model.max_size=160",
                 "solver.ims_per_batch=2", "model.roi.batch_size_per_image=16", "model.fpn.out_channels=16",
                 "model.roi.fc_dim=32"] if args.small else []
    step("data", make_shapes, ["--output", str(shapes), "--num-train", str(args.num_train), "--num-val",
                               str(args.num_val), "--crops", str(crops), "--seed", str(args.seed), *sides], timings)
    step("classifier", train_cls, ["--config", "demo/shapes_crops_resnet18", "--data", str(crops),
                                   "--output", str(out / "classifier"), "--max-iter", str(args.cls_iters),
                                   f"solver.steps=[{args.cls_iters * 2 // 3},{args.cls_iters * 9 // 10}]", *common,
                                   *cls_small],
         timings)
    det_args = ["--config", f"demo/shapes_resnet18_{args.head.upper()}", "--data", str(shapes), "--max-iter",
                str(args.det_iters), f"solver.steps=[{args.det_iters * 4 // 5}]",
                f"train.eval_period={max(1, args.det_iters // 2)}", *common, *det_small]
    step("detector", train_det, [*det_args, "--weights", str(out / "classifier" / "model_final.pth"), "--output",
                                 str(out / "detector")], timings)
    step("evaluation", eval_det, ["--checkpoint", str(out / "detector" / "model_final.pth"), "--dataset", "shapes",
                                  "--data", str(shapes), "--metric", "voc07", "coco", "--output", str(out / "eval"),
                                  "--json", str(out / "eval" / "metrics.json"), "--workers", str(args.workers),
                                  "--batch-size", "4", "--device", args.device, "--amp", args.amp,
                                  *(["--no-progress"] if args.no_progress else [])],
         timings)
    if args.compare_scratch:
        step("detector from scratch", train_det, [*det_args, "--output", str(out / "detector_scratch")], timings)
    path = report(out, timings, args.compare_scratch)
    log.info(f"\nreport: {path}  (total {sum(timings.values()) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
