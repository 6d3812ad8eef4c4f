"""Parity with detectron2: the same Faster R-CNN weights (C4 or FPN) give the same detections in detectron2 and here.

Needs detectron2's Python source and its pure-Python dependencies on PYTHONPATH (it runs on CPU without
its compiled extension); nothing of detectron2 is part of this project:

    PYTHONPATH=/path/to/detectron2:/path/to/fvcore_iopath_yacs python -m benchmarks.parity_detectron2 \
        --d2-config /path/to/detectron2/configs/COCO-Detection/faster_rcnn_R_50_C4_3x.yaml \
        --config configs/detection/detectron2_R50_C4.yaml --image photo.jpg [--weights model_final.pkl]

Without `--weights` (no network here) the detectron2 model gets seeded random weights made realistic: each
frozen BN gets a random affine map and is calibrated to normalise its input on the image
(`backbones.layers.calibrate_frozen_batchnorm`), the box predictor gets spread-out scores. The weights are
written as a detectron2 model-zoo `.pkl`, imported with `detection.build.import_detector`, and both
detectors run on the image resized (as detectron2's `ResizeShortestEdge` does, with PIL) to the test size,
so that no resampling difference enters. Prints the largest box and score differences over the kept
detections, for our detector as imported and for its inference copy (frozen BN folded, channels last).

`--per-block` says where the inference copy's score drift comes from: for every residual block, the stem and the
box predictor, the largest difference between the copy's output and the imported model's, relative to the
output's largest magnitude, both for the block alone (given the imported model's input: what its own folded
weights and kernels add) and along the network (what has built up by then); once with the folded copy in NCHW
and once channels-last, to tell the folding's rounding from the NHWC kernels'.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backbones.layers import calibrate_frozen_batchnorm
from benchmarks.common import relative_difference
from detection.build import import_detector
from detection.faster_rcnn import inference_copy
from detection.train import DEFAULTS, LIMITS, OPEN_KEYS
from engine.config import load_config


@dataclass
class Pair:
    """detectron2's model and ours with the same weights, and the same resized image for each."""

    d2_model: torch.nn.Module
    d2_input: list[dict]
    ours: torch.nn.Module
    image: torch.Tensor  # (3, H, W) RGB in 0..1, already at the test size
    size: tuple[int, int]  # (width, height)


def make_pair(d2_config: str, config: str, image_path: str, weights: str | None = None, seed: int = 0) -> Pair:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model

    d2_cfg = get_cfg()
    d2_cfg.merge_from_file(d2_config)
    d2_cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    d2_model = build_model(d2_cfg).eval()

    image = Image.open(image_path).convert("RGB")
    w, h = image.size
    size, max_size = d2_cfg.INPUT.MIN_SIZE_TEST, d2_cfg.INPUT.MAX_SIZE_TEST
    scale = min(size / min(h, w), max_size / max(h, w))
    new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
    rgb = np.asarray(image.resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
    bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1)
    d2_input = [{"image": bgr, "height": new_h, "width": new_w}]

    if weights:
        DetectionCheckpointer(d2_model).load(weights)
    else:
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in d2_model.named_parameters():
            if "box_predictor.cls_score.weight" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif "box_predictor.bbox_pred.weight" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.005)
        for module in d2_model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=g) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
        calibrate_frozen_batchnorm(d2_model, lambda: d2_model(d2_input), bn_types=(FrozenBatchNorm2d,))
        weights = str(Path(tempfile.mkdtemp()) / "model_final.pkl")
        with open(weights, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in d2_model.state_dict().items()},
                         "__author__": "parity check"}, f)
    cfg = load_config(DEFAULTS, config, [], open_keys=OPEN_KEYS, limits=LIMITS)
    ours, _ = import_detector(weights, cfg)
    return Pair(d2_model, d2_input, ours, torch.from_numpy(rgb / 255.0).permute(2, 0, 1).float(), (new_w, new_h))


def compare(expected, got: dict[str, torch.Tensor]) -> str:
    n_d2, n_ours = len(expected), len(got["boxes"])
    n = min(n_d2, n_ours)
    box_diff = (expected.pred_boxes.tensor[:n] - got["boxes"][:n]).abs().max().item() if n else 0.0
    score_diff = (expected.scores[:n] - got["scores"][:n]).abs().max().item() if n else 0.0
    labels_equal = bool(torch.equal(expected.pred_classes[:n] + 1, got["labels"][:n]))
    return (f"detectron2 kept {n_d2}, ours {n_ours}; max |box diff| {box_diff:.2e} px, max |score diff| "
            f"{score_diff:.2e}, labels equal: {labels_equal}")


BLOCKS = ("BasicBlock", "Bottleneck", "ResNetStem", "FCBoxHead", "FastRCNNPredictor")


def block_drift(reference: torch.nn.Module, variant: torch.nn.Module,
                image: torch.Tensor) -> list[tuple[str, float, float]]:
    """(name, drift of the block alone, drift along the network) for each block of `BLOCKS` in `reference` and
    the same-named one in `variant`, the drift being max |variant - reference| / max |reference| of its output.
    Along the network the box head runs on the reference's proposals: the variant's own proposals may be others
    (near-tied ones swap places), and comparing the head on other boxes would say nothing."""
    blocks = {n: m for n, m in reference.named_modules() if type(m).__name__ in BLOCKS}
    variant_blocks = dict(variant.named_modules())
    seen: dict[str, tuple] = {}
    along: dict[str, tuple] = {}

    def hook(module: torch.nn.Module, store: dict, name: str):
        def record(_module, inputs: tuple, output) -> None:  # returning None leaves the output alone
            store.setdefault(name, (inputs, output))
        return module.register_forward_hook(record)

    hooks = [hook(m, seen, n) for n, m in blocks.items()] + [hook(reference.roi_heads.pooler, seen, "pooler")]
    hooks += [hook(variant_blocks[n], along, n) for n in blocks if not n.startswith("roi_heads.")]
    hooks.append(hook(variant.roi_heads.pooler, along, "pooler"))
    reference([image])
    variant([image])
    for h in hooks:
        h.remove()
    heads = variant.roi_heads
    hooks = [hook(variant_blocks[n], along, n) for n in blocks if n.startswith("roi_heads.")]
    heads.predictor(heads.box_head(heads.pooler(along.pop("pooler")[0][0], seen.pop("pooler")[0][1])))
    for h in hooks:
        h.remove()

    def drift(got, expected) -> float:  # the predictor's (scores, deltas) as one tensor
        got, expected = (torch.cat([x.flatten() for x in t]) if isinstance(t, tuple) else t for t in (got, expected))
        return relative_difference(got, expected)

    rows = []
    for name, (inputs, expected) in seen.items():
        fmt = torch.channels_last if variant.channels_last and inputs[0].dim() == 4 else torch.contiguous_format
        alone = variant_blocks[name](*(x.contiguous(memory_format=fmt) for x in inputs))
        rows.append((name, drift(alone, expected), drift(along[name][1], expected)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d2-config", required=True, help="detectron2 yaml (configs/COCO-Detection/...)")
    parser.add_argument("--config", required=True, help="our recipe for the same model")
    parser.add_argument("--image", required=True)
    parser.add_argument("--weights", help="a detectron2 checkpoint (default: calibrated random weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-block", action="store_true", help="where the inference copy's drift comes from")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pair = make_pair(args.d2_config, args.config, args.image, args.weights, args.seed)
    expected = pair.d2_model(pair.d2_input)[0]["instances"]
    print(f"image {args.image} at {pair.size[0]}x{pair.size[1]}; top scores {expected.scores[:3].tolist()}")
    print(f"as imported:     {compare(expected, pair.ours([pair.image])[0])}")
    print(f"inference copy:  {compare(expected, inference_copy(pair.ours)([pair.image])[0])}")
    if args.per_block:
        nchw = block_drift(pair.ours, inference_copy(pair.ours, channels_last=False), pair.image)
        nhwc = block_drift(pair.ours, inference_copy(pair.ours), pair.image)
        print("| block | folded, NCHW: alone | along the network | folded, channels-last: alone | along |")
        print("|---|---|---|---|---|")
        for (name, a, b), (_, c, d) in zip(nchw, nhwc, strict=True):
            print(f"| {name} | {a:.1e} | {b:.1e} | {c:.1e} | {d:.1e} |")


if __name__ == "__main__":
    main()
