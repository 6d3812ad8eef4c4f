"""CPU inference against detectron2 on identical work: the same R50-C4 weights (detectron2's model converted),
the same 1067x800 image, 1000 RoIs through res5, the same number of threads.

Times, interleaved, median CPU and wall seconds per image: detectron2's model; ours as imported; our inference
copy (frozen BN folded into the convolutions, channels-last); optionally (`--compile`) that copy under
`torch.compile`; and our ONNX export (`tools/export.py`) in ONNX Runtime. Ratios are detectron2's time over
each (> 1: faster than detectron2). Needs detectron2 from source on PYTHONPATH, as benchmarks.parity_detectron2.

    PYTHONPATH=/path/to/detectron2:/path/to/deps python -m benchmarks.bench_vs_detectron2 \
        --d2-config /path/to/detectron2/configs/COCO-Detection/faster_rcnn_R_50_C4_3x.yaml \
        --config configs/detection/detectron2_R50_C4.yaml --image photo.jpg [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import interleaved_times, machine_line
from benchmarks.parity_detectron2 import make_pair
from detection.faster_rcnn import SingleImageDetector, inference_copy
from engine.export import export_model, image_dims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d2-config", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the inference copy under torch.compile")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    pair = make_pair(args.d2_config, args.config, args.image)
    fast = inference_copy(pair.ours)
    image = pair.image
    runs = {"detectron2": lambda: pair.d2_model(pair.d2_input),
            "ours": lambda: pair.ours([image]),
            "ours, inference copy": lambda: fast([image])}
    if args.compile:
        compiled = inference_copy(pair.ours, compile=True)
        runs["ours, compiled"] = lambda: compiled([image])
    if not args.no_onnx:
        import onnxruntime

        path = Path(tempfile.mkdtemp()) / "detector.onnx"
        export_model(SingleImageDetector(inference_copy(pair.ours, channels_last=False)), (image,), path, "onnx",
                     dynamic_shapes=(image_dims(),), input_names=["image"],
                     output_names=["boxes", "scores", "labels"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        runs["ours, ONNX Runtime"] = lambda: session.run(None, feed)
    print(f"R50-C4 inference on a {pair.size[0]}x{pair.size[1]} image, {args.threads} threads, "
          f"{machine_line(torch.device('cpu'))}")
    with torch.inference_mode():
        times = interleaved_times(runs, torch.device("cpu"), args.repeats, warmup=2)
    reference = times["detectron2"]
    for name, t in times.items():
        print(f"  {name:<22} wall {t['wall']:.3f} s  cpu {t['cpu']:.3f} s   detectron2 / this: wall "
              f"{reference['wall'] / t['wall']:.2f}  cpu {reference['cpu'] / t['cpu']:.2f}")


if __name__ == "__main__":
    main()
