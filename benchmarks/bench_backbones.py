"""Our ResNet-50 against torchvision's in one process: inference and one SGD training step.

Prints images/s of each and the ratio ours/theirs (target >= 0.97), for contiguous and channels_last
inputs. Both models hold the same weights, so they do the same arithmetic.

    python benchmarks/bench_backbones.py [--batch-size 8] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import backbones
from benchmarks.common import interleaved_medians, machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{args.arch}, batch {args.batch_size}, {args.image_size}px, {machine_line(device)}")

    theirs = getattr(torchvision.models, args.arch)(weights=None).to(device)
    ours = backbones.build_model(args.arch).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    for layout in (torch.contiguous_format, torch.channels_last):
        xs = x.contiguous(memory_format=layout)
        for model in (theirs, ours):
            model.to(memory_format=layout)

        def infer(model, xs=xs):
            def run():
                with torch.inference_mode():
                    model.eval()(xs)
            return run

        def train(model, xs=xs):
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

            def run():
                model.train()
                loss = torch.nn.functional.cross_entropy(model(xs), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return run

        for mode, make in (("inference", infer), ("train step", train)):
            t = interleaved_medians({"ours": make(ours), "torchvision": make(theirs)}, device, args.repeats)
            ips = {k: args.batch_size / v for k, v in t.items()}
            name = "channels_last" if layout is torch.channels_last else "contiguous"
            print(f"{mode:>10} {name:>13}: ours {ips['ours']:8.1f} img/s  torchvision {ips['torchvision']:8.1f} "
                  f"img/s  ratio {ips['ours'] / ips['torchvision']:.3f}")


if __name__ == "__main__":
    main()
