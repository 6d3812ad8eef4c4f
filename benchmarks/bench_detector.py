"""Our ResNet-50 C4 Faster R-CNN beside torchvision's fasterrcnn_resnet50_fpn (random weights, the same
image, one process): inference ms/img, one SGD training step, and peak memory.

Both resize to shorter side 600 (max 1000). They are different designs (C4: res5 per region on 300 test /
128 training RoIs; FPN: 4 levels, 1000 test / 512 training RoIs), so the ratio says what our recipe costs
against the detector people reach for, not that one implementation of the same network is faster.
Peak memory: CUDA's max_memory_allocated on a GPU; on the CPU (Linux), the peak resident set (VmHWM) of a
fresh process per model, after building it, after inference and after a training step.

    python -m benchmarks.bench_detector [--device cuda] [--backbone resnet101] [--min-size 800] [--amp bf16]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp

import torch
import torchvision

from benchmarks.common import interleaved_medians, machine_line
from detection.build import MODEL_DEFAULTS, build_detector


def make_models(args: argparse.Namespace, device: torch.device):
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    cfg["model"].update(backbone=args.backbone, min_size=[args.min_size], max_size=args.max_size)
    ours = build_detector(cfg, num_classes=80).to(device)
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81, min_size=args.min_size,
        max_size=args.max_size).to(device)  # without weights torchvision trains every layer with plain BN
    return {"ours": ours, "torchvision": theirs}


def inputs(args: argparse.Namespace, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 480, 640, generator=g).to(device) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[50.0, 60.0, 250.0, 300.0], [300.0, 100.0, 600.0, 420.0]], device=device),
                "labels": torch.tensor([3, 17], device=device)} for _ in range(args.batch)]
    return images, targets


def step_fns(models, images, targets, amp: str, device: torch.device):
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    fns = {}
    for name, model in models.items():
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

        def infer(model=model):
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model.eval()(images)

        def train(model=model, opt=opt):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = sum(model.train()(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[name] = (infer, train)
    return fns


def _peak_rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _cpu_peaks(args: argparse.Namespace, name: str, queue) -> None:
    """In a fresh process: peak RSS once the model is built, after inference, after a training step."""
    device = torch.device("cpu")
    model = make_models(args, device)[name]
    images, targets = inputs(args, device)
    infer, train = step_fns({name: model}, images, targets, "none", device)[name]
    built = _peak_rss_mib()
    infer()
    after_infer = _peak_rss_mib()
    train()
    queue.put((built, after_infer, _peak_rss_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--min-size", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{args.backbone} C4 vs torchvision R50-FPN, {args.batch} x 640x480 -> shorter side {args.min_size}, "
          f"amp={args.amp}, {machine_line(device)}")
    torch.manual_seed(0)
    models = make_models(args, device)
    images, targets = inputs(args, device)
    fns = step_fns(models, images, targets, args.amp, device)
    for mode, index in (("inference", 0), ("train step", 1)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = interleaved_medians({n: f[index] for n, f in fns.items()}, device, args.repeats, warmup=1)
        print(f"{mode:>10}: ours {1000 * t['ours'] / args.batch:8.1f} ms/img  torchvision "
              f"{1000 * t['torchvision'] / args.batch:8.1f} ms/img  speed ratio {t['torchvision'] / t['ours']:.2f}")
    for name, (infer, train) in fns.items():
        if device.type == "cuda":
            peaks = []
            for fn in (infer, train):
                torch.cuda.reset_peak_memory_stats(device)
                fn()
                peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
            print(f"peak GPU memory allocated, {name}: inference {peaks[0]:.0f} MiB, train step {peaks[1]:.0f} MiB")
        else:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            child = ctx.Process(target=_cpu_peaks, args=(args, name, queue))
            child.start()
            built, after_infer, after_train = queue.get()
            child.join()
            print(f"peak RSS of a fresh process, {name}: model built {built:.0f} MiB, after inference "
                  f"{after_infer:.0f} MiB, after a train step {after_train:.0f} MiB")


if __name__ == "__main__":
    main()
