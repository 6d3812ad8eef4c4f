"""The FPN detector: level assignment and per-level anchors by hand, the pyramid's shapes, learning, weights of
torchvision and detectron2 FPN models giving their detections, aspect-ratio grouping, export."""

import copy
import json

import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN as TorchvisionFasterRCNN
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

import backbones
from backbones.layers import calibrate_frozen_batchnorm
from detection.anchors import AnchorGenerator
from detection.build import MODEL_DEFAULTS, build_detector, detector_checkpoint, import_detector, load_detector
from detection.data.shapes import make_shapes
from detection.fpn import BackboneWithFPN
from detection.roi_heads import assign_levels
from detection.train import DEFAULTS, LIMITS, OPEN_KEYS
from engine.checkpoint import save_checkpoint
from engine.cli import run_cli
from engine.config import load_config
from engine.sampler import GlobalBatchSampler
from tests.helpers import TINY_DETECTOR, detectron2_names
from tools import convert_weights, export, train_det

TINY_FPN = ["model.backbone_options.width=8", "model.fpn.out_channels=16", "model.roi.fc_dim=32"]


def test_level_assignment_by_hand():
    sides = torch.tensor([224.0, 112.0, 448.0, 56.0, 20.0, 1000.0, 300.0, 160.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], dim=1)
    # floor(4 + log2(side / 224)), clamped to P2..P5, minus 2: 224 -> P4, 112 -> P3, 448 -> P5, 56 -> P2,
    # 20 -> below P2, 1000 -> above P5, 300 -> log2(1.34) = 0.42 -> P4, 160 -> log2(0.71) = -0.49 -> P3
    for rule in ("detectron2", "torchvision"):
        assert assign_levels(boxes, 2, 5, rule=rule).tolist() == [2, 1, 3, 0, 0, 3, 2, 1]
    wide = torch.tensor([[0.0, 0.0, 448.0, 112.0]])  # sqrt(448 * 112) = 224
    assert assign_levels(wide, 2, 5).tolist() == [2]


def test_the_two_level_rules_differ_just_below_each_boundary():
    """At a boundary side b (112, 224, 448: log2(b / 224) whole), a box 1e-5 above or below is on the same level in
    both libraries; 3e-7 below (float32: 111.99997, 223.99994, 447.99988), floor(4 + log2(s / 224)) lies a few
    float32 steps under the whole number: detectron2's guard (1e-8 inside the log, below float32's resolution there)
    leaves it on the lower level, torchvision's (1e-6 added after the log) lifts it to the upper one."""
    rows = []
    for b, lower in ((112.0, 0), (224.0, 1), (448.0, 2)):
        rows += [(b * (1 + 1e-5), lower + 1, lower + 1), (b * (1 - 1e-5), lower, lower), (b, lower + 1, lower + 1),
                 (b * (1 - 3e-7), lower, lower + 1)]
    sides = torch.tensor([r[0] for r in rows])
    boxes = torch.stack([torch.zeros(len(rows)), torch.zeros(len(rows)), sides, sides], dim=1)
    assert assign_levels(boxes, 2, 5, rule="detectron2").tolist() == [r[1] for r in rows]
    assert assign_levels(boxes, 2, 5, rule="torchvision").tolist() == [r[2] for r in rows]


def test_anchors_per_level_by_hand():
    generator = AnchorGenerator([32, 64], [1.0], strides=[4, 8])
    fine, coarse = generator([torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 2)])
    assert fine.tolist() == [[-16, -16, 16, 16], [-12, -16, 20, 16], [-16, -12, 16, 20], [-12, -12, 20, 20]]
    assert coarse.tolist() == [[-32, -32, 32, 32], [-24, -32, 40, 32]]
    # torchvision's variants: corners rounded (a 32-pixel anchor of ratio 1:2 is 45.25 x 22.63 wide: +-22.63,
    # +-11.31 -> 23, 11) and a level's stride the padded image size // its grid (100 // 13 = 7, 120 // 15 = 8)
    rounded = AnchorGenerator([[32]], [0.5], strides=[4], round_cells=True, stride_from_image=True)
    (anchors,) = rounded([torch.zeros(1, 1, 13, 15)], image_size=(100, 120))
    assert anchors[0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    assert anchors[1].tolist() == [-15.0, -11.0, 31.0, 11.0] and anchors[15].tolist() == [-23.0, -4.0, 23.0, 18.0]


def test_the_pyramid_has_strides_4_to_64_and_one_width():
    trunk = backbones.backbone_from_model(backbones.build_model("resnet18", width=8),
                                          ["res2", "res3", "res4", "res5"])
    fpn = BackboneWithFPN(trunk, out_channels=24)
    shapes = fpn.output_shape()
    assert [(n, s.stride, s.channels) for n, s in shapes.items()] == [
        ("p2", 4, 24), ("p3", 8, 24), ("p4", 16, 24), ("p5", 32, 24), ("p6", 64, 24)]
    out = fpn(torch.rand(1, 3, 64, 96))
    assert {n: tuple(t.shape) for n, t in out.items()} == {
        "p2": (1, 24, 16, 24), "p3": (1, 24, 8, 12), "p4": (1, 24, 4, 6), "p5": (1, 24, 2, 3), "p6": (1, 24, 1, 2)}


def test_a_tiny_fpn_detector_learns_two_images(tmp_path, capsys):
    shapes = tmp_path / "shapes"
    make_shapes(shapes, num_train=2, num_val=1, seed=4, min_side=96, max_side=112, empty_fraction=0.0)
    out = tmp_path / "run"
    assert run_cli(train_det.main, ["--config", "demo/shapes_resnet18_FPN", "--data", str(shapes), "--output",
                                    str(out), "--max-iter", "300", "--no-progress", *TINY_DETECTOR, *TINY_FPN,
                                    "model.roi.batch_size_per_image=64", "data.val_split=train", "data.flip_prob=0",
                                    "solver.lr=0.02", "solver.clip_grad_norm=5", "solver.steps=[240]",
                                    "solver.warmup_iters=20", "train.eval_period=0", "train.log_period=100"]) == 0
    assert json.loads((out / "metrics.json").read_text())["voc07"]["mAP"] == 100.0
    capsys.readouterr()


def calibrated_torchvision_model(layout: str) -> torch.nn.Module:
    """torchvision's fasterrcnn_resnet50_fpn with seeded random weights made well-conditioned: BatchNorm2d (a model
    built without weights) or FrozenBatchNorm2d with epsilon 0 (the layout of the published weights)."""
    torch.manual_seed(0)
    size = {"min_size": 160, "max_size": 256}
    if layout == "batchnorm":
        model, bn_types = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **size), (torch.nn.BatchNorm2d,)
    else:
        body = resnet50(norm_layer=TorchvisionFrozenBN)
        model, bn_types = TorchvisionFasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, **size), (
            TorchvisionFrozenBN,)
        overwrite_eps(model, 0.0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 150, 210, generator=g)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, bn_types):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        calibrate_frozen_batchnorm(model, lambda: model([image]), bn_types)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.2, generator=g)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.01, generator=g)
    return model, image


@pytest.mark.parametrize("layout", ["batchnorm", "frozen"])
def test_torchvision_fasterrcnn_resnet50_fpn_weights_give_its_detections(tmp_path, layout, capsys):
    model, image = calibrated_torchvision_model(layout)
    with torch.no_grad():
        expected = model([image])[0]
    assert len(expected["boxes"]) == 100
    path = tmp_path / "fasterrcnn_resnet50_fpn.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "ours.pth"
    assert run_cli(convert_weights.main, ["--from", "torchvision", "--src", str(path), "--output", str(out), "--config",
                    "torchvision_R50_FPN", "model.min_size=[160]", "model.test_min_size=160",
                    "model.max_size=256"]) == 0
    ours, cfg, names = load_detector(out)
    assert cfg["model"]["frozen_bn"] == ({"eps": 1e-5, "fused": True} if layout == "batchnorm" else
                                         {"eps": 0.0, "fused": False})
    assert len(names) == 90 and names[11] == "N/A"  # torchvision's labels are COCO's category ids, gaps included
    with torch.no_grad():
        got = ours.eval()([image])[0]
    assert torch.equal(got["labels"], expected["labels"])
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=0.01)
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=1e-4)
    capsys.readouterr()


def test_a_detectron2_fpn_checkpoint_gives_the_detector_it_was_written_from(tmp_path):
    cfg = load_config(DEFAULTS, "detectron2_R50_FPN", [*TINY_FPN, "model.norm=frozen_bn", "model.min_size=[96]",
                                                       "model.test_min_size=96",
                                                       "model.max_size=160"], open_keys=OPEN_KEYS, limits=LIMITS)
    torch.manual_seed(0)
    detector = build_detector(cfg, 3).eval()
    with torch.no_grad():
        detector.backbone.trunk.stages.stem.conv1.weight /= 58.0  # BGR 0..255 input with std 1
        detector.roi_heads.predictor.cls_score.weight.normal_(0, 0.5)
        image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(1))
        calibrate_frozen_batchnorm(detector, lambda: detector([image]))
        expected = detector([image])[0]
    assert len(expected["boxes"]) > 10
    path = tmp_path / "model_final.pth"
    torch.save({"model": detectron2_names(detector.state_dict())}, path)
    model, _ = import_detector(str(path), cfg, ["a", "b", "c"])
    with torch.no_grad():
        got = model([image])[0]
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_aspect_ratio_grouping_batches_one_orientation_and_resumes_exactly():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1]  # 7 landscape, 10 portrait
    run = GlobalBatchSampler(17, 4, seed=3, groups=groups)
    assert run.iters_per_epoch == 7 // 4 + 10 // 4
    it = iter(run)
    batches = [next(it) for _ in range(9)]  # three epochs
    for batch in batches:
        assert len({groups[i] for _, i in batch}) == 1
    resumed = iter(GlobalBatchSampler(17, 4, seed=3, groups=groups, start_iter=5))
    assert [next(resumed) for _ in range(4)] == batches[5:]
    # the same global batch, split over 2 processes with 2 accumulation steps each, as one process sees it
    parts = [iter(GlobalBatchSampler(17, 4, seed=3, groups=groups, rank=r, world_size=2, accumulate=2))
             for r in range(2)]
    for batch in batches[:3]:
        split = [pair for part in parts for pair in (next(part) + next(part))]
        assert split == batch


def test_two_plus_two_iterations_with_grouping_equal_four(tmp_path, capsys):
    shapes = tmp_path / "shapes"
    make_shapes(shapes, num_train=8, num_val=2, seed=6, min_side=80, max_side=120)
    args = ["--config", "demo/shapes_resnet18_FPN", "--data", str(shapes), "--no-progress", *TINY_DETECTOR, *TINY_FPN,
            "data.aspect_ratio_grouping=true", "train.checkpoint_period=2", "train.eval_period=0"]
    assert run_cli(train_det.main, [*args, "--output", str(tmp_path / "once"), "--max-iter", "4"]) == 0
    assert run_cli(train_det.main, [*args, "--output", str(tmp_path / "twice"), "--max-iter", "2"]) == 0
    assert run_cli(train_det.main, ["--output", str(tmp_path / "twice"), "--resume", "--max-iter", "4",
                                    "--no-progress"]) == 0
    once = torch.load(tmp_path / "once" / "model_final.pth", weights_only=True)["state_dict"]
    twice = torch.load(tmp_path / "twice" / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(once[k], twice[k]) for k in once)
    capsys.readouterr()


def test_an_fpn_detector_exports_to_onnx_with_the_same_detections(tmp_path, capsys):
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    cfg["model"].update(backbone="resnet18", backbone_options={"width": 8}, head="fpn", min_size=[96],
                        max_size=160, anchor_sizes=[16, 32, 64, 128, 256])
    cfg["model"]["fpn"].update(out_channels=16)
    cfg["model"]["roi"].update(pooler="roialign", fc_dim=32)
    cfg["model"]["rpn"].update(min_box_size=0.0)
    torch.manual_seed(0)
    detector = build_detector(cfg, 3).eval()
    with torch.no_grad():
        detector.roi_heads.predictor.cls_score.weight.normal_(0, 0.3)
        image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
        calibrate_frozen_batchnorm(detector, lambda: detector([image]))
    path = save_checkpoint(detector_checkpoint(detector, cfg, ["a", "b", "c"]), tmp_path / "fpn.pth")
    assert run_cli(export.main, ["--checkpoint", str(path), "--output", str(tmp_path / "fpn.onnx")]) == 0
    check = json.loads((tmp_path / "fpn.onnx.check.json").read_text())  # the tool checks both shapes itself
    assert check["passed"] and check["compared"] > 0 and len(check["inputs"]) == 2
