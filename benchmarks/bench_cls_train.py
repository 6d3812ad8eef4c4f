"""Classification training throughput: `engine.Trainer` against a bare PyTorch loop, and the ImageNet
data pipeline's images/s per worker.

Trainer overhead: the same model, optimizer and in-memory batches run through the Trainer (LR schedule,
NaN guard, metrics, progress bar) and through a five-line loop, alternately; prints both images/s and
the ratio (target: overhead < 5%, i.e. ratio >= 0.95). Data: the paper's ImageNet training transform, decode
included, images/s on one core, ours against torchvision's resize-then-crop (target >= 250 img/s per core).

    python -m benchmarks.bench_cls_train [--arch resnet50] [--batch-size 32] [--image-size 224] [--device cuda]
        [--amp bf16] [--channels-last] [--skip-data] [--images ../shared/data/imagenet-samples/images]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

import backbones
from benchmarks.common import interleaved_times, machine_line, sync
from classification.transforms import train_transform
from engine.distributed import DistInfo
from engine.images import load_rgb
from engine.schedule import LRSchedule
from engine.trainer import Trainer, TrainerOptions


def trainer_vs_bare(args: argparse.Namespace, device: torch.device) -> None:
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = backbones.build_model(args.arch, **({"width": args.width} if args.width else {})).to(device)
    model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
                .contiguous(memory_format=fmt), torch.randint(0, 1000, (args.batch_size,), device=device))
               for _ in range(4)]
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def endless(_start: int):
        while True:
            yield from batches

    def step(m, batch):
        images, labels = batch
        logits = m(images)
        return {"loss_cls": F.cross_entropy(logits, labels)}, {"error": 100.0 * (logits.argmax(1) != labels)
                                                               .float().mean().item()}

    def run_trainer(iters: int) -> float:
        with tempfile.TemporaryDirectory() as out:
            opts = TrainerOptions(max_iter=iters, output_dir=Path(out), amp=args.amp, checkpoint_period=10**9,
                                  log_period=20, progress=True)
            trainer = Trainer(model, optimizer, LRSchedule(0.01), endless, step, opts,
                              DistInfo(0, 1, 0, device))
            trainer.save = lambda: None  # time the loop, not the final checkpoint write
            sync(device)
            start = time.perf_counter()
            trainer.train()
            sync(device)
            return time.perf_counter() - start

    def run_bare(iters: int) -> float:
        data = endless(0)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            images, labels = next(data)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return time.perf_counter() - start

    run_bare(3)
    times = {"trainer": [], "bare": []}
    for _ in range(args.repeats):
        times["bare"].append(run_bare(args.iters))
        times["trainer"].append(run_trainer(args.iters))
    ips = {k: args.batch_size * args.iters / sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"{args.arch} batch {args.batch_size} {args.image_size}px amp={args.amp} "
          f"channels_last={args.channels_last}: trainer {ips['trainer']:.1f} img/s, bare loop {ips['bare']:.1f} "
          f"img/s, ratio {ips['trainer'] / ips['bare']:.3f}")


def _sample_jpegs(folder: str | None, root: Path) -> list[Path]:
    """The JPEGs of `folder` (e.g. ../shared/data/imagenet-samples/images), else 64 written 500x375 ones."""
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if files:
            return files
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.rand(64, 3, 24, 32, generator=torch.Generator().manual_seed(0)),
                                             size=(375, 500), mode="bicubic").clamp(0, 1)
    files = []
    for i, pixels in enumerate(smooth):
        noise = rng.integers(-20, 20, (375, 500, 3))
        array = (pixels.permute(1, 2, 0).numpy() * 255 + noise).clip(0, 255).astype(np.uint8)
        files.append(root / f"{i}.JPEG")
        Image.fromarray(array).save(files[-1], quality=90)
    return files


def data_pipeline(args: argparse.Namespace) -> None:
    """The ImageNet training input, decode included, on one core (one thread, no workers): ours (one-pass
    scale-and-crop, large JPEGs decoded at a reduced scale) against torchvision's Resize then RandomCrop, the
    same random draws and the rest of the transform identical. 16 cores feed 16 x this rate."""
    torch.set_num_threads(1)
    ours = train_transform("imagenet", 224)
    reference = T.Compose([T.Lambda(lambda im: TF.resize(im, int(torch.randint(256, 481, ()).item()),
                                                         antialias=True)), T.RandomCrop(224), *ours.transforms[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        files = _sample_jpegs(args.images, Path(tmp))
        runs = {"torchvision resize+crop": lambda: [reference(load_rgb(f)) for f in files],
                "ours": lambda: [ours(load_rgb(f, 480)) for f in files]}
        times = interleaved_times(runs, torch.device("cpu"), args.repeats, warmup=1)
    rates = {name: len(files) / t["cpu"] for name, t in times.items()}
    where = args.images or "64 written 500x375 JPEGs"
    print(f"ImageNet train transform, decode included, one core, {len(files)} images ({where}): "
          + ", ".join(f"{name} {rate:.0f} img/s" for name, rate in rates.items())
          + f", ratio {rates['ours'] / rates['torchvision resize+crop']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=0, help="registry width option (0: the paper's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--skip-data", action="store_true")
    parser.add_argument("--images", help="a folder of JPEGs for the input pipeline (default: 64 written ones)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine_line(device))
    trainer_vs_bare(args, device)
    if not args.skip_data:
        data_pipeline(args)


if __name__ == "__main__":
    main()
