"""A small multi-class detection set made of real photos, for the learning benchmark's second dataset.

Objects are the CIFAR-10 test photos of `../shared/data/cifar10-test-jpg` (10 classes, 10 photos each), pasted
at 24..96 pixels (aspect jittered by up to 25%) onto real background photos (the ImageNet, VOC, COCO and
OpenMMLab sample photos of `../shared/data`), 1..5 per image, overlapping each other by IoU < 0.2. Training
and validation images use disjoint background photos; the object photos are shared (each class has only ten),
so what generalises is position, scale, neighbourhood and background. Written as a COCO json per split:

    python -m benchmarks.photo_objects --shared ../shared/data --output runs/photo_objects
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND_GLOBS = ("imagenet-samples/images/*.JPEG", "rafaelpadilla-review-odm/toyexample/images/*.jpg",
                    "openmmlab-testdata/*.jpg", "openmmlab-testdata/demo/*.jpg", "openmmlab-testdata/VOCdevkit/*/*.jpg",
                    "pytorch-hub-dog/*.jpg", "hf-coco-39769/*.png")


def _iou(a: list[float], b: list[float]) -> float:
    iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def write_split(out: Path, split: str, backgrounds: list[Path], objects: dict[str, list[Path]], count: int,
                rng: np.random.Generator) -> Path:
    (out / split).mkdir(parents=True, exist_ok=True)
    classes = sorted(objects)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        photo = Image.open(backgrounds[int(rng.integers(len(backgrounds)))]).convert("RGB")
        w, h = (256, 320) if rng.random() < 0.5 else (320, 256)
        scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.6)
        photo = photo.resize((max(w, round(photo.width * scale)), max(h, round(photo.height * scale))),
                             Image.BILINEAR)
        x0, y0 = int(rng.integers(photo.width - w + 1)), int(rng.integers(photo.height - h + 1))
        canvas = photo.crop((x0, y0, x0 + w, y0 + h))
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, 6))):
            label = int(rng.integers(len(classes)))
            side = rng.uniform(24, 96)
            aspect = rng.uniform(0.8, 1.25)
            bw, bh = round(side * aspect ** 0.5), round(side / aspect ** 0.5)
            x, y = int(rng.integers(w - bw + 1)), int(rng.integers(h - bh + 1))
            box = [float(x), float(y), float(x + bw), float(y + bh)]
            if any(_iou(box, other) >= 0.2 for other in boxes):
                continue
            files = objects[classes[label]]
            patch = Image.open(files[int(rng.integers(len(files)))]).convert("RGB").resize((bw, bh), Image.BICUBIC)
            canvas.paste(patch, (x, y))
            boxes.append(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [box[0], box[1], bw, bh], "area": float(bw * bh), "iscrowd": 0})
        name = f"{image_id:06d}.jpg"
        canvas.save(out / split / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    path = out / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.output)
    backgrounds = sorted(p for pattern in BACKGROUND_GLOBS for p in shared.glob(pattern))
    objects = {d.name: sorted(d.glob("*.jpg")) for d in sorted((shared / "cifar10-test-jpg" / "test").iterdir())}
    if len(backgrounds) < 4 or len(objects) < 2:
        raise SystemExit(f"{shared}: expected the sample photos of ../shared/data (found {len(backgrounds)} "
                         f"backgrounds, {len(objects)} object classes)")
    rng = np.random.default_rng(args.seed)
    order = [backgrounds[i] for i in rng.permutation(len(backgrounds))]
    held = max(2, len(order) // 4)
    for split, photos, count in (("train", order[held:], args.num_train), ("val", order[:held], args.num_val)):
        path = write_split(out, split, photos, objects, count, rng)
        print(f"{split}: {count} images from {len(photos)} background photos -> {path}")


if __name__ == "__main__":
    main()
