"""A look at the data (`tools/browse_data.py`) on a large set: the statistics and the anchor fit of N boxes (default
about 100,000) against reading the annotation file they come from (our COCO reader through pycocotools), which
every tool does anyway.

    python -m benchmarks.bench_browse [--images 14000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_eval import synthetic
from benchmarks.common import machine_line
from detection.data.browse import dataset_statistics
from detection.data.coco import CocoDetection
from detection.train import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=14000)
    args = parser.parse_args()
    gt, _ = synthetic(args.images, 1, 80)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "instances.json"
        path.write_text(json.dumps(gt))
        start = time.perf_counter()
        dataset = CocoDetection(path, None)
        read = time.perf_counter() - start
    start = time.perf_counter()
    stats = dataset_statistics(dataset, DEFAULTS["model"])
    browse = time.perf_counter() - start
    print(f"{stats['images']} images, {stats['boxes']} boxes; {machine_line(torch.device('cpu'))}")
    print(f"reading the annotations: {read:.2f} s; statistics and anchor fit: {browse:.2f} s "
          f"({browse / read:.2f}x the reading)")


if __name__ == "__main__":
    main()
