#!/usr/bin/env python
"""Run a trained detector on an image or a folder of images: boxes drawn (PNG) and one JSON per image.

    python tools/predict.py --checkpoint runs/det/model_final.pth --input photos/ --output preds/ --score-thresh 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from detection.build import load_detector
from detection.data.common import load_image, to_tensors
from detection.visualize import draw_detections, save_image
from engine.cli import run_cli
from engine.distributed import resolve_device
from engine.errors import UserError
from engine.images import IMAGE_EXTENSIONS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model_final.pth of train_det.py")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for <name>.png and <name>.json")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="drawn and written detections (default 0.5)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    source = Path(args.input)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif source.is_file():
        files = [source]
    else:
        raise UserError(f"{source}: no such image or folder")
    if not files:
        raise UserError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    device = resolve_device(args.device)
    model, _, class_names = load_detector(args.checkpoint)
    model.to(device).eval()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="predict", disable=len(files) < 2):
        image = load_image(path)
        tensor, _ = to_tensors(image, {"boxes": [], "labels": []})
        with torch.no_grad():
            det = {k: v.cpu().numpy() for k, v in model([tensor.to(device)])[0].items()}
        keep = det["scores"] >= args.score_thresh
        boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
        save_image(draw_detections(image, boxes, labels, scores, class_names, args.score_thresh),
                   out / f"{path.stem}.png")
        record = {"image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
                  "detections": [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                                  "label": int(lab), "class": class_names[int(lab) - 1]}
                                 for b, s, lab in zip(boxes, scores, labels, strict=True)]}
        (out / f"{path.stem}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"{len(files)} image(s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
