"""Large images: tiled prediction against whole-image prediction, on mosaics of real photos.

The evaluation images of a dataset (e.g. the raccoon set's 40 test photos) are pasted k x k into large mosaics,
each photo resized to one cell (boxes scaled and shifted with it), so that the objects are as large as in the
photos but small against the whole image, as in aerial or slide images. A detector trained on the ordinary photos
then runs on each mosaic three ways: whole (resized to its test size, as it runs by default), on tiles of about a
cell (`--tile`, overlapping by `--overlap`), and on tiles plus a whole-image pass. Printed: COCO AP, AP50, APs and
APm against the mosaics' boxes, and seconds per mosaic, with the ratio to the whole-image run.

    python -m benchmarks.bench_tiling --checkpoint runs/raccoon/model_best.pth --dataset voc \
        --data ../shared/data/raccoon --classes raccoon --val-split test.txt --grid 3 --cell 480 --tile 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import machine_line
from detection.build import load_detector
from detection.data.catalog import DATA_FLAG_KEYS, add_data_arguments, build_detection_dataset
from detection.data.coco import CocoDetection
from detection.data.common import DetectionDataset
from detection.inference import run_inference, score
from detection.tiling import Tiling


def write_mosaics(dataset: DetectionDataset, out: Path, grid: int, cell: int) -> Path:
    """`grid` x `grid` mosaics of the dataset's images (in order, each resized to `cell` x `cell`; the last mosaic
    filled by cycling), as a COCO json and its images in `out`."""
    records = dataset.ground_truth()
    per = grid * grid
    count = -(-len(records) // per)
    images, annotations = [], []
    for m in range(count):
        canvas = Image.new("RGB", (grid * cell, grid * cell))
        for k in range(per):
            index = (m * per + k) % len(records)
            rec = records[index]
            x0, y0 = (k % grid) * cell, (k // grid) * cell
            photo = Image.open(dataset.image_path(index)).convert("RGB").resize((cell, cell), Image.BILINEAR)
            canvas.paste(photo, (x0, y0))
            sx, sy = cell / rec.width, cell / rec.height
            for box, label, ignore in zip(rec.boxes, rec.labels, rec.ignore, strict=True):
                x1, y1, x2, y2 = box[0] * sx + x0, box[1] * sy + y0, box[2] * sx + x0, box[3] * sy + y0
                annotations.append({"id": len(annotations) + 1, "image_id": m + 1, "category_id": int(label),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": int(ignore)})
        canvas.save(out / f"mosaic_{m + 1:03d}.jpg", quality=95)
        images.append({"id": m + 1, "file_name": f"mosaic_{m + 1:03d}.jpg", "width": grid * cell,
                       "height": grid * cell})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(dataset.class_names)]
    path = out / "mosaics.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--cell", type=int, default=480, help="side of each photo in the mosaic")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _, class_names = load_detector(args.checkpoint)
    data = {key: getattr(args, flag) for flag, key in DATA_FLAG_KEYS.items()}
    data["dataset"] = data["dataset"] or "coco"
    source = build_detection_dataset(data, train=False, class_names=class_names)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        ann = write_mosaics(source, Path(folder), args.grid, args.cell)
        mosaics = CocoDetection(ann, folder)
        side = args.grid * args.cell
        print(f"{len(mosaics)} mosaics of {args.grid} x {args.grid} photos, {side} x {side} px, "
              f"{sum(len(r.labels) for r in mosaics.records)} boxes; {machine_line(device)}")
        runs = {"whole image": None, f"tiles of {args.tile}": Tiling(args.tile, args.overlap),
                f"tiles of {args.tile} + whole image": Tiling(args.tile, args.overlap, full_image=True)}
        reference = None
        for name, tiling in runs.items():
            start = time.perf_counter()
            detections = run_inference(model, mosaics, device, batch_size=4, workers=0, progress=False,
                                       tiling=tiling)
            seconds = (time.perf_counter() - start) / len(mosaics)
            coco = score(detections, mosaics, ["coco"])["coco"]
            reference = reference or seconds
            shown = "  ".join(f"{k} {'n/a' if coco[k] is None else f'{coco[k]:.1f}'}"
                              for k in ("AP", "AP50", "APs", "APm", "APl"))
            print(f"  {name:<28} {shown}  {seconds:.2f} s/mosaic ({seconds / reference:.1f}x)")


if __name__ == "__main__":
    main()
