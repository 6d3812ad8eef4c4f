"""Our ResNet-50 C4 Faster R-CNN beside torchvision's fasterrcnn_resnet50_fpn (random weights, the same
image, one process): inference ms/img, one SGD training step, and peak memory.

Both resize to shorter side 600 (max 1000). They are different designs (C4: res5 per region on 300 test /
128 training RoIs; FPN: 4 levels, 1000 test / 512 training RoIs), so the ratio says what our recipe costs
against the detector people reach for, not that one implementation of the same network is faster.
Peak memory: CUDA's max_memory_allocated on a GPU; on the CPU, each model's peak RSS measured in a child
process (timings stay in this process).

    python -m benchmarks.bench_detector [--device cuda] [--backbone resnet101] [--min-size 800] [--amp bf16]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import resource

import torch
import torchvision

from benchmarks.common import interleaved_medians, machine_line
from detection.build import MODEL_DEFAULTS, build_detector


def make_models(args: argparse.Namespace, device: torch.device):
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    cfg["model"].update(backbone=args.backbone, min_size=[args.min_size], max_size=args.max_size)
    ours = build_detector(cfg, num_classes=80).to(device)
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81, min_size=args.min_size, max_size=args.max_size,
        trainable_backbone_layers=3).to(device)
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


def _child_peak(args: argparse.Namespace, name: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    device = torch.device("cpu")
    models = {name: make_models(args, device)[name]}
    images, targets = inputs(args, device)
    infer, train = step_fns(models, images, targets, "none", device)[name]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    infer()
    peak_infer = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train()
    peak_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((name, peak_infer / 1024, peak_train / 1024, base / 1024))


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
    if device.type == "cuda":
        for name, fn in fns.items():
            torch.cuda.reset_peak_memory_stats(device)
            fn[1]()
            print(f"peak GPU memory, train step, {name}: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    else:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for name in fns:
            proc = ctx.Process(target=_child_peak, args=(args, name, queue))
            proc.start()
            proc.join()
            n, infer_mb, train_mb, base_mb = queue.get()
            print(f"peak RSS {n}: {infer_mb:.0f} MiB after inference, {train_mb:.0f} MiB after a train step "
                  f"(model built: {base_mb:.0f} MiB)")


if __name__ == "__main__":
    main()
