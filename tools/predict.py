#!/usr/bin/env python
"""Run a trained detector on images and videos: boxes drawn, a COCO-format results file, JSON lines for videos.

    python tools/predict.py --checkpoint runs/det/model_final.pth --input photos/ --output preds/
    python tools/predict.py --checkpoint runs/det/model_best.pth --input "shots/**/*.jpg" --output preds/ \
        --batch-size 8 --device cuda --amp bf16
    python tools/predict.py --checkpoint runs/det/model_final.pth --input clip.mp4 --output preds/

--input is an image, a folder (searched recursively), a glob pattern (quote it) or a video file. Every image is
drawn at the same relative path and in the same format under --output (a.jpg and a.png stay two files);
`results.json` holds the detections of all images in COCO results format (bbox as x, y, width, height;
image_id numbers the images in order and file_name names them). A video becomes the annotated video of the
same name and `<name>.jsonl`, one JSON line of detections per frame. Detections below --score-thresh are
neither drawn nor written.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/<tool>.py` in a checkout, without `pip install`: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import glob
import itertools
import json
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from detection.evaluation.coco import detections_to_coco_results, write_coco_results
from detection.predictor import Predictor
from detection.tiling import add_tiling_arguments, tiling_from_args
from detection.visualize import draw_detections, save_image
from engine.cli import ToolParser, non_negative_float, positive_int, run_cli
from engine.errors import UserError
from engine.images import IMAGE_EXTENSIONS, load_rgb
from engine.logs import get_logger, progress_bar
from engine.precision import AMP_CHOICES

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")
# the codec each container is written with by opencv
FOURCC = {".avi": "MJPG", ".mkv": "XVID", ".webm": "VP80", ".mpg": "MPG1", ".mpeg": "MPG1", ".wmv": "WMV2"}
log = get_logger()


def find_inputs(spec: str) -> tuple[Path, list[Path]]:
    """(the folder output names are relative to, the image and video files) of a file, folder or glob."""
    wanted = (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)
    path = Path(spec)
    if glob.has_magic(spec):
        fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        root = Path(*fixed) if fixed else Path(".")
    elif path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in wanted)
        root = path
    elif path.is_file():
        files, root = [path], path.parent
    else:
        raise UserError(f"{spec}: no such image, video, folder or pattern")
    files = [f for f in files if f.suffix.lower() in wanted]
    if not files:
        raise UserError(f"{spec}: no images or videos ({', '.join(wanted)})")
    return root, files


def detections_json(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label),
             "class": name} for box, score, label, name in zip(result["boxes"], result["scores"], result["labels"],
                                                                result["names"], strict=True)]


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_video(predictor: Predictor, source: Path, target: Path, batch_size: int, show_progress: bool) -> int:
    """Annotated copy of a video (same name and container) and `<name>.jsonl`; returns the frame count."""
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise UserError(f"{source}: cannot open the video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, index = None, 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".jsonl"), "w", encoding="utf-8") as lines, \
            progress_bar(total=total, desc=source.name, unit="frame", enabled=show_progress) as bar:
        done = False
        while not done:
            frames = []
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    done = True
                    break
                frames.append(np.ascontiguousarray(frame[:, :, ::-1]))
            for frame, result in zip(frames, predictor.predict(frames), strict=True):
                if writer is None:
                    fourcc = cv2.VideoWriter_fourcc(*FOURCC.get(source.suffix.lower(), "mp4v"))
                    writer = cv2.VideoWriter(str(target), fourcc, fps, (frame.shape[1], frame.shape[0]))
                    if not writer.isOpened():
                        raise UserError(f"{target}: opencv cannot write this video format")
                drawn = draw_detections(frame, result["boxes"], result["labels"], result["scores"],
                                        predictor.class_names, 0.0)
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                lines.write(json.dumps({"frame": index, "time": round(index / fps, 3),
                                        "detections": detections_json(result)}) + "\n")
                index += 1
                bar.update(1)
    capture.release()
    if writer is not None:
        writer.release()
    return index


def score_threshold(text: str) -> float | str:
    """`--score-thresh`: a number >= 0, or `best`."""
    return text if text == "best" else non_negative_float(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a detector trained by train_det.py (model_final.pth, "
                        "model_best.pth) or converted by convert_weights.py")
    parser.add_argument("--input", required=True, help="an image, a folder (recursive), a glob pattern or a video")
    parser.add_argument("--output", required=True, help="folder for the drawn images, results.json and videos")
    parser.add_argument("--score-thresh", type=score_threshold, default=0.5,
                        help="drawn and written detections (default 0.5); 'best': each class's threshold of best F1 "
                        "on the evaluation set, stored with the model by training")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images (or video frames) per forward pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none")
    parser.add_argument("--compile", action="store_true", help="run the convolutions under torch.compile (a slow "
                        "first image; pays off over many)")
    parser.add_argument("--skip-bad-images", action="store_true", help="warn and count unreadable images")
    add_tiling_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    root, files = find_inputs(args.input)
    out = Path(args.output)
    targets = {f: out / f.relative_to(root) if f.is_relative_to(root) else out / f.name for f in files}
    clash = next((f for f, t in targets.items() if t.resolve() in {g.resolve() for g in files}), None)
    if clash is not None:
        raise UserError(f"{args.output}: writing there would overwrite the input {clash}; choose another --output")
    tiling = tiling_from_args(args)
    predictor = Predictor(args.checkpoint, args.device, args.score_thresh, args.amp, args.compile,
                          **({} if tiling is None else {"tile": tiling.tile, "tile_overlap": tiling.overlap,
                                                        "tile_merge": tiling.merge,
                                                        "tile_full_image": tiling.full_image,
                                                        "tile_batch": args.batch_size}))
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
    detections: dict[int, dict[str, Any]] = {}
    skipped: list[Path] = []
    with progress_bar(total=len(images), desc="predict", unit="img", enabled=not args.no_progress) as bar:
        for group in batches(images, args.batch_size):
            readable, pictures = [], []
            for path in group:
                try:
                    pictures.append(np.array(load_rgb(path)))
                    readable.append(path)
                except UserError:
                    if not args.skip_bad_images:
                        raise
                    skipped.append(path)
            for path, picture, result in zip(readable, pictures, predictor.predict(pictures), strict=True):
                save_image(draw_detections(picture, result["boxes"], result["labels"], result["scores"],
                                           predictor.class_names, 0.0), targets[path])
                detections[len(detections) + 1] = result
                bar.update(1)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", stacklevel=1)
    images = [f for f in images if f not in set(skipped)]
    if images:
        category_ids = predictor.category_ids
        results = detections_to_coco_results(
            detections, dict(enumerate(category_ids, start=1)) if category_ids else None)
        names = {i: str(f.relative_to(root) if f.is_relative_to(root) else f.name) for i, f in enumerate(images, 1)}
        for entry in results:
            entry["file_name"] = names[entry["image_id"]]
        write_coco_results(results, out / "results.json")
        log.info(f"{len(images)} image(s), {len(results)} detections -> {out} (results.json)")
    for video in videos:
        frames = predict_video(predictor, video, targets[video], args.batch_size, not args.no_progress)
        log.info(f"{video}: {frames} frames -> {targets[video]} and {targets[video].with_suffix('.jsonl')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
