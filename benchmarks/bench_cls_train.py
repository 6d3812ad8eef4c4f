"""Classification training throughput: `engine.Trainer` against a bare PyTorch loop, and the ImageNet
data pipeline's images/s per worker.

Trainer overhead: the same model, optimizer and in-memory batches run through the Trainer (LR schedule,
NaN guard, metrics, progress bar) and through a five-line loop, alternately; prints both images/s and
the ratio (target: overhead < 5%, i.e. ratio >= 0.95). Data: the paper's ImageNet training transform on
500x375 JPEGs written to a temporary folder, through a DataLoader with 1 and 2 workers.

    python -m benchmarks.bench_cls_train [--arch resnet50] [--batch-size 32] [--image-size 224] [--device cuda]
        [--amp bf16] [--channels-last] [--skip-data]
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
from torch.utils.data import DataLoader

import backbones
from benchmarks.common import machine_line, sync
from classification.data import ImageFolder
from classification.transforms import train_transform
from engine.distributed import DistInfo
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


def data_pipeline(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        for c in range(4):
            folder = Path(root) / "train" / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(32):
                pixels = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
        dataset = ImageFolder(Path(root) / "train", train_transform("imagenet", 224))
        for workers in (1, 2):
            loader = DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=True)
            next(iter(loader))  # start-up is not throughput
            start, n = time.perf_counter(), 0
            for images, _ in loader:
                n += len(images)
            rate = n / (time.perf_counter() - start)
            print(f"ImageNet train transform, 500x375 JPEG: {workers} worker(s) {rate:.1f} img/s "
                  f"({rate / workers:.1f} img/s per worker)")


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
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine_line(device))
    trainer_vs_bare(args, device)
    if not args.skip_data:
        data_pipeline(args)


if __name__ == "__main__":
    main()
