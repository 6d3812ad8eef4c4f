"""Faster R-CNN parts against hand-computed values, and the assembled detector's behaviour."""

import copy
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import backbones
from backbones import FrozenBatchNorm2d
from backbones.layers import calibrate_frozen_batchnorm, fold_conv_batchnorm
from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.build import MODEL_DEFAULTS, build_detector, detector_checkpoint, load_detector
from detection.data.common import GroundTruth
from detection.evaluation import voc_evaluate
from detection.faster_rcnn import inference_copy
from detection.matcher import Matcher
from detection.rpn import RegionProposalNetwork, RPNHead
from detection.sampler import sample_labels
from detection.structures import ImageList
from detection.transform import DetectionTransform, resized_shape
from engine.errors import UserError


def small_cfg(backbone="resnet18", **model):
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    options = {"width": 4, "hidden": 16} if backbone.startswith("vgg") else {"width": 8}
    cfg["model"].update({"backbone": backbone, "backbone_options": options, "min_size": [96], "max_size": 160,
                         "anchor_sizes": [16, 32, 64], "size_divisibility": 16, **model})
    cfg["model"]["rpn"].update(pre_nms_topk_train=500, post_nms_topk_train=100, pre_nms_topk_test=500,
                               post_nms_topk_test=50)
    cfg["model"]["roi"].update(batch_size_per_image=32)
    return cfg


def test_anchors_by_hand():
    gen = AnchorGenerator(sizes=[32], aspect_ratios=[0.5, 1.0, 2.0], strides=16)
    (anchors,) = gen(torch.zeros(1, 1, 2, 3))
    assert anchors.shape == (2 * 3 * 3, 4)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)  # ratio = h / w, area 32^2
    expected_first = torch.tensor([[-w / 2, -h / 2, w / 2, h / 2], [-16, -16, 16, 16], [-h / 2, -w / 2, h / 2, w / 2]])
    torch.testing.assert_close(anchors[:3], expected_first)
    # position (y=1, x=2) is anchor block 1 * 3 + 2, shifted by (x, y) * stride = (32, 16)
    torch.testing.assert_close(anchors[15:18], expected_first + torch.tensor([32.0, 16.0, 32.0, 16.0]))


def test_box_coder_known_values_and_round_trip():
    coder = BoxCoder((10, 10, 5, 5))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[5.0, 5.0, 15.0, 25.0]])  # centre (10, 15) vs (5, 5); size (10, 20) vs (10, 10)
    deltas = coder.encode(ref, box)
    torch.testing.assert_close(deltas, torch.tensor([[10 * 0.5, 10 * 1.0, 0.0, 5 * math.log(2)]]))
    torch.testing.assert_close(coder.decode(deltas, ref), box)
    refs = torch.rand(50, 2) * 100
    refs = torch.cat([refs, refs + torch.rand(50, 2) * 50 + 1], 1)
    boxes = torch.cat([refs[:, :2] + torch.randn(50, 2), refs[:, 2:] + torch.randn(50, 2) + 2], 1)
    torch.testing.assert_close(coder.decode(coder.encode(refs, boxes), refs), boxes, rtol=1e-4, atol=1e-4)
    multi = coder.decode(torch.cat([deltas, torch.zeros(1, 4)], 1), ref)  # class-specific: 4 deltas per class
    torch.testing.assert_close(multi, torch.cat([box, ref], 1))


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.8, 0.5, 0.2, 0.0, 0.05],
                        [0.1, 0.65, 0.25, 0.0, 0.0]])
    matches, labels = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(iou)
    assert matches.tolist() == [0, 1, 1, 0, 0]
    assert labels.tolist() == [1, 1, 0, 0, 0]  # column 1 is gt 1's best (0.65): kept though < 0.7
    _, labels = Matcher((0.3, 0.7), (0, -1, 1))(iou)
    assert labels.tolist() == [1, -1, 0, 0, 0]
    _, labels = Matcher((0.1, 0.5), (-1, 0, 1))(iou)  # detector: background in [0.1, 0.5)
    assert labels.tolist() == [1, 1, 0, -1, -1]
    matches, labels = Matcher((0.3, 0.7), (0, -1, 1))(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0]


def test_sampler_proportions():
    labels = torch.tensor([1] * 100 + [0] * 1000 + [-1] * 50)
    idx, valid = sample_labels(labels, 256, 0.25)
    assert len(idx) == 256 and valid.all() and len(torch.unique(idx)) == 256
    assert (labels[idx] == 1).sum() == 64 and (labels[idx] == 0).sum() == 192  # 25% foreground, the rest background
    labels = torch.tensor([2] * 10 + [0] * 1000)
    idx, valid = sample_labels(labels, 256, 0.5)
    assert (labels[idx] == 2).sum() == 10 and (labels[idx] == 0).sum() == 246  # too few positives: negatives fill
    labels = torch.tensor([1] * 3 + [0] * 5 + [-1] * 100)  # too few candidates: the rest is marked invalid
    idx, valid = sample_labels(labels, 64, 0.25)
    assert len(idx) == 64 and valid.sum() == 8 and (labels[idx[valid]] >= 0).all() and (labels[idx[~valid]] < 0).all()
    draws = torch.stack([sample_labels(torch.tensor([1] * 4 + [0] * 4), 2, 0.5)[0] for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {0, 1, 2, 3}  # each positive is picked at random


def test_proposals_are_clipped_nms_filtered_and_ordered_by_objectness():
    rpn = RegionProposalNetwork(RPNHead(4, 1), AnchorGenerator([16], [1.0], strides=16), nms_thresh=0.7,
                                post_nms_topk=(3, 3), min_box_size=0.0).eval()
    (anchors,) = rpn.anchor_generator(torch.zeros(1, 1, 2, 2))  # centres (0,0) (16,0) (0,16) (16,16)
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    props = rpn.find_proposals(anchors, logits, torch.zeros(1, 4, 4), [(20, 20)])
    assert len(props) == 1
    expected = torch.tensor([[8.0, 0, 20, 8], [8, 8, 20, 20], [0, 8, 8, 20]])  # scores 0.9, 0.7, 0.5
    torch.testing.assert_close(props[0], expected)


def test_transform_scales_to_the_shorter_side_and_back_for_odd_sizes():
    assert resized_shape(97, 131, 600, 1000) == (600, 810)
    assert resized_shape(100, 400, 600, 1000) == (250, 1000)  # the long side caps the scale
    transform = DetectionTransform((96,), 160, size_divisibility=16)
    images = [torch.rand(3, 97, 131), torch.rand(3, 61, 45)]
    targets = [{"boxes": torch.tensor([[3.0, 5.0, 120.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 0.0, 45.0, 61.0]]), "labels": torch.tensor([2])}]
    batch, scaled = transform(images, targets)
    assert batch.tensors.shape[-2] % 16 == 0 and batch.tensors.shape[-1] % 16 == 0
    assert batch.image_sizes == [(96, 130), (130, 96)] or batch.image_sizes == [(96, 130), (131, 96)]
    back = transform.postprocess([{"boxes": t["boxes"].clone()} for t in scaled], batch.image_sizes,
                                 [(97, 131), (61, 45)])
    for b, t in zip(back, targets, strict=True):
        torch.testing.assert_close(b["boxes"], t["boxes"], rtol=1e-5, atol=1e-4)


def test_image_list_pads_and_keeps_sizes():
    batch = ImageList.from_tensors([torch.ones(3, 5, 7), torch.ones(3, 9, 4)], size_divisibility=8)
    assert batch.tensors.shape == (2, 3, 16, 8) and batch.image_sizes == [(5, 7), (9, 4)]
    assert batch.tensors[0, :, 5:].abs().sum() == 0 and batch.tensors[1, :, :9, :4].min() == 1


def _images_and_targets():
    images = [torch.rand(3, 97, 131), torch.rand(3, 80, 80)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # no objects
    return images, targets


@pytest.mark.parametrize("name", [n for n in backbones.list_models() if not n.startswith("cifar")])
def test_every_imagenet_backbone_trains_a_step_and_predicts_in_original_coordinates(name):
    model = build_detector(small_cfg(name), num_classes=3)
    images, targets = _images_and_targets()
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.roi_heads.parameters() if p.requires_grad)
    with torch.no_grad():
        outputs = model.eval()(images)
    for out, image in zip(outputs, images, strict=True):
        assert set(out) == {"boxes", "scores", "labels"}
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) <= 100
        height, width = image.shape[1:]
        assert (out["boxes"][:, 2] <= width + 1e-3).all() and (out["boxes"][:, 3] <= height + 1e-3).all()
        assert (out["labels"] >= 1).all() and (out["labels"] <= 3).all()


def test_frozen_parts_get_no_gradient_and_frozen_bn_statistics_stay():
    model = build_detector(small_cfg("resnet50", norm="frozen_bn", freeze_at=2), num_classes=3).train()
    stem, res2 = model.backbone.stages["stem"], model.backbone.stages["res2"]
    assert all(not p.requires_grad for p in [*stem.parameters(), *res2.parameters()])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.roi_heads.box_head.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images, targets = _images_and_targets()
    sum(model(images, targets).values()).backward()
    assert all(p.grad is None for p in [*stem.parameters(), *res2.parameters()])
    opt.step()
    after = model.state_dict()
    frozen = [k for k in before if "running" in k or k.startswith(("backbone.stages.stem", "backbone.stages.res2"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["backbone.stages.res3.0.conv1.weight"], after["backbone.stages.res3.0.conv1.weight"])


def test_degenerate_and_non_finite_target_boxes_overlap_nothing_and_losses_stay_finite():
    """A box without area (or with NaN coordinates) matches no anchor and no proposal, itself included (its IoU
    0 / 0 counts as 0): it teaches nothing and breaks nothing, and no host sync was spent finding it."""
    model = build_detector(small_cfg(), num_classes=2).train()
    images, targets = _images_and_targets()
    good = targets[0]["boxes"][:1]
    targets[0]["boxes"] = torch.cat([good, torch.tensor([[30.0, 30.0, 30.0, 50.0], [float("nan"), 1, 2, 3]])])
    targets[0]["labels"] = torch.tensor([1, 2, 2])
    torch.manual_seed(0)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    proposals = [torch.tensor([[30.0, 30.0, 30.0, 50.0], [10.0, 12.0, 60.0, 70.0]])]
    _, labels, _ = model.roi_heads.sample(proposals, [{"boxes": torch.tensor([[30.0, 30.0, 30.0, 50.0]]),
                                                       "labels": torch.tensor([1])}])
    assert (labels <= 0).all()  # the degenerate box is nobody's foreground, not even its own copy's


def test_initialisation_from_classifier_weights_and_clear_mismatches(tmp_path):
    classifier = backbones.build_model("resnet18", num_classes=5, width=8)
    for m in classifier.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "model_final.pth"
    torch.save({"arch": "resnet18", "options": {"width": 8}, "state_dict": classifier.state_dict()}, path)
    model = build_detector(small_cfg(weights=str(path)), num_classes=3)
    torch.testing.assert_close(model.backbone.stages["res3"][0].bn1.running_mean, classifier.layer2[0].bn1.running_mean)
    torch.testing.assert_close(model.roi_heads.box_head.res5[0].conv1.weight, classifier.layer4[0].conv1.weight)
    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet34().state_dict(), tv)
    with pytest.raises(UserError, match="tv.pth: weights of resnet34 do not fit resnet18"):
        build_detector(small_cfg(weights=str(tv)), num_classes=3)
    with pytest.raises(UserError, match="holds resnet18 weights but the detector backbone is resnet50"):
        build_detector(small_cfg("resnet50", weights=str(path)), num_classes=3)
    with pytest.raises(UserError, match="detectors are built on ImageNet"):
        build_detector(small_cfg("cifar_resnet20"), num_classes=3)
    with pytest.raises(UserError, match="a resnet18 classifier checkpoint"):
        load_detector(path)


def test_detector_checkpoint_round_trip(tmp_path):
    cfg = small_cfg("vgg16")
    model = build_detector(cfg, num_classes=2).eval()
    path = tmp_path / "det.pth"
    torch.save(detector_checkpoint(model, cfg, ["a", "b"]), path)
    loaded, _, names = load_detector(path)
    images, _ = _images_and_targets()
    with torch.no_grad():
        a, b = model(images), loaded.eval()(images)
    assert names == ["a", "b"]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["boxes"], y["boxes"])


@pytest.mark.slow
def test_a_tiny_detector_overfits_two_shapes_images(tmp_path):
    from detection.data import CocoDetection
    from detection.data.shapes import make_shapes

    torch.manual_seed(0)
    make_shapes(tmp_path, num_train=4, num_val=1, seed=5, min_side=96, max_side=128)
    ds = CocoDetection(tmp_path / "annotations" / "instances_train.json", tmp_path / "train", train=True)
    images, targets = zip(*[ds[0], ds[1]], strict=True)
    cfg = small_cfg(freeze_at=0, backbone_options={"width": 16})
    cfg["model"]["min_size"] = [128]
    model = build_detector(cfg, num_classes=3)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    gts = [GroundTruth(i, "", 0, 0, t["boxes"].double().numpy(), t["labels"].numpy(), np.zeros(len(t["labels"]), bool))
           for i, t in enumerate(targets)]
    ap = 0.0
    for iteration in range(1, 251):
        loss = sum(model.train()(list(images), list(targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if iteration % 25 == 0:
            with torch.no_grad():
                outputs = model.eval()(list(images))
            dets = {i: {k: v.numpy() for k, v in o.items()} for i, o in enumerate(outputs)}
            ap = voc_evaluate(dets, gts, ds.class_names)["mAP"]
            if ap == 100.0:
                break
    assert ap == 100.0, f"AP@0.5 {ap:.1f} after {iteration} iterations"


def test_folding_a_frozen_bn_into_its_convolution_by_hand():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    conv.weight.data = torch.tensor([[[[2.0]]], [[[-1.0]]]])
    bn = FrozenBatchNorm2d(2, eps=0.0)
    bn.weight.copy_(torch.tensor([3.0, 0.5]))
    bn.bias.copy_(torch.tensor([1.0, -2.0]))
    bn.running_mean.copy_(torch.tensor([4.0, 1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    folded = fold_conv_batchnorm(conv, bn)
    # channel 0: 3 * (2x - 4) / 2 + 1 = 3x - 5; channel 1: 0.5 * (-x - 1) / 0.5 - 2 = -x - 3
    assert folded.weight.flatten().tolist() == [3.0, -1.0] and folded.bias.tolist() == [-5.0, -3.0]
    x = torch.tensor([[[[1.0, -2.0]]]])
    assert folded(x).flatten().tolist() == [-2.0, -11.0, -4.0, -1.0]


@pytest.mark.parametrize("backbone,head,norm", [("resnet18", "c4", "frozen_bn"), ("resnet50", "c4", "frozen_bn"),
                                               ("resnet18", "fpn", "frozen_bn"), ("resnet18", "c4", "bn")])
def test_the_inference_copy_detects_what_the_model_detects(backbone, head, norm):
    sizes = [16, 32, 64] if head == "c4" else [8, 16, 32, 64, 128]
    cfg = small_cfg(backbone, head=head, anchor_sizes=sizes, norm=norm)
    cfg["model"]["roi"]["head_init"] = "detectron2"  # the small predictor of a fine-tuned detector, as calibrated
    model = build_detector(cfg, num_classes=3).eval()
    image = torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(0))
    norm_type = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d  # trained BN: its running statistics
    with torch.no_grad():
        calibrate_frozen_batchnorm(model, lambda: model([image]), bn_types=(norm_type,))
        expected = model([image])[0]
    fast = inference_copy(model)
    with torch.inference_mode():
        got = fast([image])[0]
    norms = [m for m in model.modules() if isinstance(m, norm_type)]
    assert norms and not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fast.modules())  # folded
    assert len(expected["boxes"]) > 5 and got["labels"].tolist() == expected["labels"].tolist()
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=1e-5)
    assert model.state_dict().keys() == build_detector(cfg, 3).state_dict().keys()  # the original keeps its BN


def test_block_drift_finds_the_one_block_that_computes_differently():
    from benchmarks.parity_detectron2 import block_drift
    cfg = small_cfg("resnet18", head="c4", anchor_sizes=[16, 32, 64], norm="frozen_bn")  # (GN would undo a scale)
    model = build_detector(cfg, num_classes=3).eval()
    image = torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = block_drift(model, copy.deepcopy(model), image)
        changed = copy.deepcopy(model)
        shortcut = changed.backbone.stages.res3[0].downsample[0]  # (the residual branch starts at zero)
        shortcut.weight.mul_(1 + 1e-3)  # one block computes 0.1% differently; everything else is the same copy
        rows = {name: (alone, along) for name, alone, along in block_drift(model, changed, image)}
    names = [name for name, _, _ in same]
    assert names[0].endswith("stem") and "roi_heads.box_head.res5.0" in names and names[-1] == "roi_heads.predictor"
    assert all(alone == 0 and along == 0 for _, alone, along in same)  # an identical copy computes identically
    before = names[:names.index("backbone.stages.res3.0")]
    assert all(rows[n] == (0, 0) for n in before)  # untouched upstream of the change
    assert 1e-5 < rows["backbone.stages.res3.0"][0] <= 1.1e-3  # the block alone: at most the 0.1% it was given
    assert all(rows[n][0] == 0 for n in names if n != "backbone.stages.res3.0")  # the others alone: unchanged
    assert rows["roi_heads.predictor"][1] > 0  # and it reaches the scores along the network
