"""Exported models under onnxruntime against the same models in PyTorch, in one process (CPU).

Prints milliseconds per call of each and the ratio onnxruntime / PyTorch for a classifier (batch of
images) and the Faster R-CNN detector (one image, resizing and post-processing included). Weights are
random; both runtimes compute the same function (`tools/export.py` checks that).

    python -m benchmarks.bench_export [--arch resnet50] [--batch-size 8] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import onnxruntime
import torch

import backbones
from benchmarks.common import interleaved_medians, machine_line
from detection.build import MODEL_DEFAULTS, build_detector
from detection.faster_rcnn import SingleImageDetector
from engine.export import export_model, image_dims


def compare(name: str, model: torch.nn.Module, example: torch.Tensor, dynamic: dict, repeats: int) -> None:
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_model(model, (example,), path, "onnx", dynamic_shapes=(dynamic,), input_names=["x"], output_names=["y"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy()}

    def run_torch():
        with torch.inference_mode():
            model(example)

    t = interleaved_medians({"torch": run_torch, "ort": lambda: session.run(None, feed)}, torch.device("cpu"),
                            repeats)
    print(f"{name}: PyTorch {1000 * t['torch']:.1f} ms, onnxruntime {1000 * t['ort']:.1f} ms, "
          f"ratio onnxruntime/PyTorch {t['ort'] / t['torch']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--detector-size", type=int, nargs=2, default=[600, 800], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(machine_line(torch.device("cpu")), f"onnxruntime {onnxruntime.__version__}")

    classifier = backbones.build_model(args.arch).eval()
    compare(f"{args.arch} batch {args.batch_size} 224px", classifier, torch.randn(args.batch_size, 3, 224, 224),
            image_dims(batch=True), args.repeats)

    model_cfg = copy.deepcopy(MODEL_DEFAULTS)
    model_cfg.update(backbone=args.arch)
    detector = SingleImageDetector(build_detector({"model": model_cfg}, 20)).eval()
    compare(f"Faster R-CNN {args.arch}-C4, one {args.detector_size[0]}x{args.detector_size[1]} image", detector,
            torch.rand(3, *args.detector_size), image_dims(), args.repeats)


if __name__ == "__main__":
    main()
