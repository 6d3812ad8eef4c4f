"""Our detectors against torchvision's on identical work, and our FPN against our C4.

1. R50-FPN: torchvision's `fasterrcnn_resnet50_fpn` as its published weights run it (frozen BN with epsilon 0,
   res2 and the stem frozen), seeded; the same weights converted to ours with `configs/detection/
   torchvision_R50_FPN.yaml` (which gives its detections to the bit). Inference on one image and one SGD training
   step, interleaved, CPU time and wall time: the ratio is torchvision's time over ours (> 1: ours is faster).
2. Our R50-FPN (that recipe) against our C4 detector (`--c4-recipe`, default `detectron2_R50_C4`; the paper's
   `detectron2_R101_C4` for its R101-C4 figures) on the same images.
Our inference runs the inference copy that evaluation and prediction use (`detection.faster_rcnn.inference_copy`:
frozen BN folded, channels-last); torchvision's runs its model as it is.

    python -m benchmarks.bench_detector [--device cuda] [--min-size 800] [--batch 2] [--amp bf16] [--repeats 5]
        [--c4-recipe detectron2_R101_C4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torchvision.models import resnet50
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN as TorchvisionFasterRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from benchmarks.common import interleaved_times, machine_line
from detection.build import build_detector, import_detector
from detection.faster_rcnn import FasterRCNN, inference_copy
from detection.train import DEFAULTS, LIMITS, OPEN_KEYS
from engine.config import load_config
from engine.precision import autocast


def torchvision_fpn(size: list[str]) -> torch.nn.Module:
    """torchvision's fasterrcnn_resnet50_fpn as built for its published weights, seeded random weights."""
    torch.manual_seed(0)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    model = TorchvisionFasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=int(size[0]),
                                  max_size=int(size[1]))
    overwrite_eps(model, 0.0)
    return model


def ours_from(model: torch.nn.Module, recipe: str, size: list[str]) -> torch.nn.Module:
    path = Path(tempfile.mkdtemp()) / "weights.pth"
    torch.save(model.state_dict(), path)
    cfg = load_config(DEFAULTS, recipe, [f"model.min_size=[{size[0]}]", f"model.test_min_size={size[0]}",
                                         f"model.max_size={size[1]}"], open_keys=OPEN_KEYS, limits=LIMITS)
    return import_detector(str(path), cfg)[0]


def c4_model(recipe: str, size: list[str]) -> torch.nn.Module:
    cfg = load_config(DEFAULTS, recipe, [f"model.min_size=[{size[0]}]", f"model.test_min_size={size[0]}",
                                                      f"model.max_size={size[1]}"], open_keys=OPEN_KEYS, limits=LIMITS)
    torch.manual_seed(0)
    return build_detector(cfg, 80)


def step_fns(models: dict[str, torch.nn.Module], images, targets, amp: str, device: torch.device):
    fns = {}
    for name, model in models.items():
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        runner = inference_copy(model) if isinstance(model, FasterRCNN) else model.eval()

        def infer(runner=runner):
            with torch.inference_mode(), autocast(device, amp):
                runner(images)

        def train(model=model, opt=opt):
            with autocast(device, amp):
                loss = sum(model.train()(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[name] = (infer, train)
    return fns


def report(title: str, fns, reference: str, device: torch.device, repeats: int, batch: int) -> None:
    print(title)
    for mode, index in (("inference", 0), ("train step", 1)):
        t = interleaved_times({n: f[index] for n, f in fns.items()}, device, repeats, warmup=1)
        shown = "  ".join(f"{n} {1000 * v['wall'] / batch:7.1f} ms/img (cpu {1000 * v['cpu'] / batch:7.1f})"
                          for n, v in t.items())
        others = [n for n in t if n != reference]
        ratio = "  ".join(f"{reference}/{n}: wall {t[reference]['wall'] / t[n]['wall']:.2f}, cpu "
                          f"{t[reference]['cpu'] / t[n]['cpu']:.2f}" for n in others)
        print(f"  {mode:>10}: {shown}   ratio {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--c4-recipe", default="detectron2_R50_C4", help="the C4 detector compared with our FPN")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = [str(args.min_size), str(args.max_size)]
    print(f"{args.batch} x 1067x800 image(s) -> shorter side {args.min_size}, amp={args.amp}, {machine_line(device)}")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 800, 1067, generator=g).to(device) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[50.0, 60.0, 450.0, 500.0], [500.0, 100.0, 1000.0, 700.0]], device=device),
                "labels": torch.tensor([3, 17], device=device)} for _ in range(args.batch)]
    theirs = torchvision_fpn(size)
    ours = ours_from(theirs, "torchvision_R50_FPN", size)
    models = {"torchvision": theirs.to(device), "ours": ours.to(device)}
    report("R50-FPN, identical weights and settings (torchvision_R50_FPN.yaml):",
           step_fns(models, images, targets, args.amp, device), "torchvision", device, args.repeats, args.batch)
    del models["torchvision"]
    models["ours C4"] = c4_model(args.c4_recipe, size).to(device)
    report(f"ours R50-FPN vs ours C4 ({args.c4_recipe}, random weights):",
           step_fns(models, images, targets, args.amp, device), "ours C4", device, args.repeats, args.batch)


if __name__ == "__main__":
    main()
