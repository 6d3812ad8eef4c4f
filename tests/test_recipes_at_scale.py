"""What only full-scale runs meet: images without objects, mixed precision, several processes (warm-up and
resume), the paper's own detection and CIFAR settings, input conventions carried from classifier to detector,
exports torchvision can load, detectron2's inference rules, and no host syncs in the training step."""

import copy
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.ops import nms

import backbones
from classification.config import DEFAULTS as CLS_DEFAULTS
from classification.config import OPEN_KEYS as CLS_OPEN_KEYS
from classification.train import build_schedule
from classification.transforms import CIFAR_MEAN, CIFAR_STD, train_transform
from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.build import MODEL_DEFAULTS, build_detector
from detection.data.shapes import make_shapes
from detection.data.voc import VOCDetection
from detection.ops import grouped_nms
from detection.roi_heads import RoIHeads, RoIPooler
from detection.rpn import RegionProposalNetwork, RPNHead
from detection.structures import ImageList
from detection.train import DEFAULTS as DET_DEFAULTS
from detection.train import OPEN_KEYS as DET_OPEN_KEYS
from engine.cli import run_cli
from engine.config import load_config
from engine.distributed import DistInfo
from engine.schedule import LRSchedule
from engine.trainer import Trainer, TrainerOptions
from tests.helpers import DEMO_CONFIG, ROOT, TINY_DETECTOR, one_thread, torchrun, voc_xml
from tools import convert_weights, train_cls


def tiny_detector(**model):
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    cfg["model"].update({"backbone": "resnet18", "backbone_options": {"width": 8}, "min_size": [96],
                         "max_size": 160, "anchor_sizes": [16, 32, 64], "size_divisibility": 16, **model})
    cfg["model"]["rpn"].update(pre_nms_topk_train=300, post_nms_topk_train=64, pre_nms_topk_test=300,
                               post_nms_topk_test=50)
    cfg["model"]["roi"].update(batch_size_per_image=16)
    return build_detector(cfg, 3)


# ----- 1. images without objects -------------------------------------------------------------------------------
def test_a_batch_of_images_without_objects_gives_finite_losses_and_background_rois():
    torch.manual_seed(0)
    model = tiny_detector().train()
    images = [torch.rand(3, 96, 128), torch.rand(3, 100, 90)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [dict(empty), dict(empty)])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_box_reg"] == 0 and losses["loss_rpn_loc"] == 0  # nothing to regress to
    assert losses["loss_cls"] > 0 and losses["loss_rpn_cls"] > 0  # background is still learned
    sum(losses.values()).backward()  # and it trains: gradients reach the classifier
    assert model.roi_heads.predictor.cls_score.weight.grad.abs().sum() > 0
    # as in torchvision and detectron2: every sampled proposal of an image without objects is background
    proposals = [torch.tensor([[0.0, 0, 20, 20], [10, 10, 60, 60], [5, 5, 40, 50]])]
    boxes, labels, _ = model.roi_heads.sample(proposals, [dict(empty)])
    assert labels.tolist() == [0, 0, 0] and len(boxes[0]) == 3


def test_a_voc_image_whose_objects_are_all_difficult_trains(tmp_path):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "Annotations" / "a.xml").write_text(voc_xml([("cat", (5, 5, 30, 30), True)], 64, 48))
    Image.new("RGB", (64, 48)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    image, target = VOCDetection(tmp_path, "voc", "trainval", train=True, class_names=["cat"])[0]
    assert target["boxes"].shape == (0, 4)
    torch.manual_seed(0)
    losses = tiny_detector().train()([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())


# ----- 2. mixed precision keeps box geometry in float32 ---------------------------------------------------------
def test_box_decoding_under_bf16_autocast_is_float32_geometry():
    coder = BoxCoder((1, 1, 1, 1))
    anchors = torch.tensor([[901.0, 703.0, 1003.0, 767.0], [13.5, 7.25, 141.0, 300.5]])
    deltas = torch.tensor([[0.03, -0.02, 0.1, -0.05], [0.2, 0.1, -0.3, 0.25]]).bfloat16()
    with torch.autocast("cpu", torch.bfloat16):
        boxes = coder.decode(deltas, anchors)
    reference = coder.decode(deltas.float(), anchors)  # the same deltas, decoded in float32
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(boxes, reference, rtol=0, atol=0)
    # bf16 anchors would have moved these boxes by whole pixels: bf16 counts in steps of 4 between 512 and 1024
    assert (anchors.bfloat16().float() - anchors).abs().max() >= 1


def test_a_detector_step_under_bf16_autocast_keeps_proposals_and_rois_float32(monkeypatch):
    torch.manual_seed(0)
    model = tiny_detector().train()
    seen = []
    forward = RoIPooler.forward

    def spy(self, feature, boxes):
        seen.extend(b.dtype for b in boxes)
        return forward(self, feature, boxes)

    monkeypatch.setattr(RoIPooler, "forward", spy)
    images = [torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.3, 20.7, 60.1, 80.9]]), "labels": torch.tensor([1])}]
    with torch.autocast("cpu", torch.bfloat16):
        losses = model(images, targets)
        image_list, _ = model.transform(images)
        feature = model.backbone(image_list.tensors)["res4"]
        proposals, _ = model.rpn(image_list, feature, model.transform(images, targets)[1])
    assert seen and all(d == torch.float32 for d in seen)
    assert all(p.dtype == torch.float32 for p in proposals)
    assert all(torch.isfinite(v) for v in losses.values())


# ----- 3 and 4. several processes: the error-based warm-up and exact resume --------------------------------------
def test_error_based_warm_up_is_decided_on_the_global_error(tmp_path):
    """Each process sees half the batch; with a one-iteration error window their local errors fall under the
    threshold at different iterations. Deciding on the all-reduced error keeps every replica's learning rate
    equal: two processes give what one process with the same global batch (two accumulated halves) gives."""
    common = ["--arch", "cifar_resnet20", "--batch-size", "16", "--max-iter", "6", "--no-progress", "--workers", "0",
              "--lr", "0.2", "model.options.width=4", "data.synthetic.train_size=64", "data.synthetic.val_size=16",
              "solver.warmup_until_error=87", "solver.error_window=1", "solver.warmup_factor=0.01"]
    single = tmp_path / "single"
    with one_thread():
        assert run_cli(train_cls.main, ["--output", str(single), *common, "--accumulate", "2"]) == 0
    torchrun(str(ROOT / "tools" / "train_cls.py"), "--output", str(tmp_path / "ddp"), *common, "--device", "cpu")
    a = torch.load(single / "model_final.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "model_final.pth", weights_only=True)["state_dict"]
    for k in (k for k in a if "running" not in k and "num_batches" not in k):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_process_detector_training_resumes_bit_exactly(tmp_path):
    """The detector samples anchors and RoIs from each process's generator: every rank's state is saved and
    restored, so 2 + 2 iterations on two processes equal 4 in one go."""
    shapes = tmp_path / "shapes"
    make_shapes(shapes, num_train=8, num_val=2, seed=5, min_side=96, max_side=128)
    args = [str(ROOT / "tools" / "train_det.py"), "--config", DEMO_CONFIG, "--data", str(shapes), "--device", "cpu",
            "--no-progress", *TINY_DETECTOR, "solver.ims_per_batch=4", "train.checkpoint_period=2",
            "test.vis_images=0", "train.eval_period=0"]
    torchrun(*args, "--output", str(tmp_path / "once"), "--max-iter", "4")
    torchrun(*args, "--output", str(tmp_path / "twice"), "--max-iter", "2")
    torchrun(str(ROOT / "tools" / "train_det.py"), "--output", str(tmp_path / "twice"), "--resume", "--max-iter", "4",
             "--no-progress")  # the folder's saved configuration
    once = torch.load(tmp_path / "once" / "model_final.pth", weights_only=True)["state_dict"]
    twice = torch.load(tmp_path / "twice" / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(once[k], twice[k]) for k in once)
    checkpoint = torch.load(tmp_path / "twice" / "checkpoint_0000002.pth", weights_only=True)
    assert len(checkpoint["rng_per_rank"]) == 2
    assert not torch.equal(checkpoint["rng_per_rank"][0]["torch"], checkpoint["rng_per_rank"][1]["torch"])


# ----- 5. the schedule keys the recipes need ---------------------------------------------------------------------
def test_plateau_rule_is_an_improvement_of_a_tenth_of_a_point_and_keys_reach_the_run():
    cfg = load_config(CLS_DEFAULTS, ROOT / "configs" / "classification" / "imagenet_resnet50.yaml",
                      ["solver.error_window=7", "solver.clip_grad_norm=5.0", "train.keep_checkpoints=4"],
                      open_keys=CLS_OPEN_KEYS)
    schedule = build_schedule(cfg.solver)
    assert schedule.plateau_threshold == 0.1 and schedule.plateau_patience == 3
    assert schedule._errors.maxlen == 7
    assert (cfg.solver.clip_grad_norm, cfg.train.keep_checkpoints) == (5.0, 4)
    # by hand: 30 is the best; 29.95 and 29.92 improve it by less than 0.1 point, 29.9 by exactly 0.1
    drops = [schedule.observe_val_error(e) for e in (30.0, 29.95, 29.92, 29.9, 29.85, 29.81, 29.85)]
    assert drops == [False, False, False, False, False, False, True]
    assert schedule.plateau_drops == 1


# ----- 6. the paper's detection settings -------------------------------------------------------------------------
def test_rpn_marks_border_crossing_anchors_ignore_and_never_best():
    anchors_gen = AnchorGenerator([16], [1.0], strides=16)
    (anchors,) = anchors_gen(torch.zeros(1, 1, 2, 2))
    gt = {"boxes": torch.tensor([[-6.0, -6.0, 8.0, 8.0]]), "labels": torch.tensor([1])}  # best: the corner anchor
    labels = {}
    for border in (0.0, -1.0):
        rpn = RegionProposalNetwork(RPNHead(4, 1), anchors_gen, allowed_border=border)
        torch.manual_seed(0)
        logits = torch.zeros(1, 4, requires_grad=True)
        loss = rpn.losses(anchors, logits, torch.zeros(1, 4, 4), [gt], [(30, 30)])["loss_rpn_cls"]
        loss.backward()
        labels[border] = (logits.grad[0] != 0).tolist()  # which anchors took part in the loss
    assert labels[-1.0] == [True, True, True, True]
    assert labels[0.0] == [False, False, False, True]  # only the anchor inside the image


def test_proposals_smaller_than_16_pixels_at_the_original_scale_are_dropped():
    rpn = RegionProposalNetwork(RPNHead(4, 1), AnchorGenerator([16], [1.0], strides=16), post_nms_topk=(10, 10),
                                min_box_size=16.0).eval()
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 33, 33], [40, 40, 49, 49]])  # 10, 13 and 9 px wide
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    # the image was resized by 0.75 (original 160 -> 120): 16 original pixels are 12 here
    kept = rpn.find_proposals(anchors, logits, torch.zeros(1, 3, 4), [(120, 120)], [0.75])[0]
    assert kept.tolist() == [[20.0, 20.0, 33.0, 33.0]]
    scales = ImageList(torch.zeros(1, 3, 120, 120), [(120, 120)], [(160, 160)]).scales()
    assert scales == [0.75]


def test_paper_recipes_use_the_papers_settings_and_detectron2_recipes_detectron2s():
    def model_of(name):
        return load_config(DET_DEFAULTS, ROOT / "configs" / "detection" / name, open_keys=DET_OPEN_KEYS).model

    for name in ("voc0712_R101_C4.yaml", "voc0712_VGG16.yaml", "coco_R101_C4.yaml", "voc07++12_R101_C4.yaml"):
        m = model_of(name)
        assert (m.roi.pooler, m.rpn.allowed_border, m.rpn.min_box_size) == ("roipool", 0.0, 16.0), name
    for name in ("detectron2_R50_C4.yaml", "coco_R50_C4_detectron2_recipe.yaml", "custom_R50_C4.yaml"):
        m = model_of(name)
        assert (m.roi.pooler, m.rpn.allowed_border, m.rpn.min_box_size) == ("roialign", -1.0, 0.0), name


def test_cifar_table6_recipes_train_on_50k_and_the_schedule_was_chosen_on_45k_5k():
    def data_of(name):
        return load_config(CLS_DEFAULTS, ROOT / "configs" / "classification" / name, open_keys=CLS_OPEN_KEYS).data

    for depth in (20, 32, 44, 56, 110, 1202):
        data = data_of(f"cifar_resnet{depth}.yaml")
        assert (data.train_split, data.val_split, data.pad_fill) == ("train", "test", "mean")
    selection = data_of("cifar_resnet110_schedule_selection.yaml")
    assert (selection.train_split, selection.val_split) == ("train45k", "val5k")


def test_cifar_padding_is_the_mean_colour_or_black():
    image = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    for fill, padded_value in (("mean", torch.zeros(3, 1, 1)), ("zero", -mean / std)):
        torch.manual_seed(3)
        crops = [train_transform("cifar", 32, pad_fill=fill)(image) for _ in range(8)]
        border = next(c for c in crops if (c[:, 0, 0] != c[:, 16, 16]).any())  # a crop that shows padding
        corner = border[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        inside = (corner - (1 - mean.view(3, 1)) / std.view(3, 1)).abs().amax(0) > 1e-4  # not the white image
        assert inside.any()
        # the padded pixels after normalisation: 0 for the mean colour (to rounding), -mean/std for black
        values = corner[:, inside]
        torch.testing.assert_close(values, padded_value.view(3, 1).expand_as(values), atol=0.01, rtol=0)


# ----- 7. the classifier's input convention reaches the detector -----------------------------------------------
def test_detector_takes_over_the_classifiers_normalisation(tmp_path, capsys):
    out = tmp_path / "cls"
    assert run_cli(train_cls.main, ["--output", str(out), "--arch", "resnet18", "--max-iter", "1", "--batch-size", "4",
                                    "--no-progress", "--workers", "0", "model.options.width=8",
                                    "data.synthetic.train_size=8", "data.synthetic.val_size=4"]) == 0
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    cfg["model"].update(backbone="resnet18", backbone_options={"width": 8}, weights=str(out / "model_final.pth"))
    model = build_detector(cfg, 2)
    # the synthetic set is normalised with CIFAR's statistics; in the detector's 0..255 units, by hand:
    torch.testing.assert_close(model.transform.pixel_mean.flatten(), torch.tensor([125.307, 122.961, 113.8575]))
    torch.testing.assert_close(model.transform.pixel_std.flatten(), torch.tensor([62.985, 62.0925, 66.708]))
    assert cfg["model"]["pixel_mean"] == pytest.approx([125.307, 122.961, 113.8575])  # recorded for the checkpoint
    cfg["model"].update(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
                        channel_order="RGB")
    with pytest.raises(Exception, match="these weights expect RGB input with mean \\[125.307"):
        build_detector(cfg, 2)


# ----- 8. exports torchvision can load -------------------------------------------------------------------------
@pytest.mark.parametrize("arch,options,problem", [
    ("resnet18", {}, None), ("resnet50", {}, None),
    ("plain18", {}, "torchvision has no plain18"), ("resnet18", {"shortcut": "A"}, "shortcut='B'"),
    ("resnet34", {"shortcut": "C"}, "shortcut='B'"), ("resnet18", {"width": 32}, "width=64"),
    ("cifar_resnet20", {}, "torchvision has no cifar_resnet20"), ("resnet50", {"stride_in_1x1": True},
                                                                  "stride_in_1x1=False"),
])
def test_to_torchvision_writes_only_what_torchvision_loads(tmp_path, capsys, arch, options, problem):
    model = backbones.build_model(arch, **options)
    src = tmp_path / "ours.pth"
    torch.save({"arch": arch, "options": options, "state_dict": model.state_dict()}, src)
    dst = tmp_path / "tv.pth"
    code = run_cli(convert_weights.main, ["--src", str(src), "--output", str(dst), "--to", "torchvision"])
    if problem is None:
        assert code == 0
        reference = getattr(torchvision.models, arch)()
        reference.load_state_dict(torch.load(dst, weights_only=True), strict=True)
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(reference.eval()(x), model.eval()(x))
    else:
        assert code == 2 and not dst.exists()
        assert problem in capsys.readouterr().err


# ----- 9. detectron2's inference rules ---------------------------------------------------------------------------
def test_per_class_nms_matches_one_nms_per_class_on_large_images():
    """1,500 boxes of 80 classes on a 1,300-pixel image, half of them paired at IoU exactly 0.5 with another of
    their class: one NMS per class (detectron2's choice at this size) is the reference; boxes moved 1,334 px
    apart per class in float32 get other decisions."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(750, 2, generator=g) * 1200
    base = torch.cat([xy, xy + torch.rand(750, 2, generator=g) * 100 + 20], 1)
    shifted = base.clone()
    third = (base[:, 2] - base[:, 0]) / 3
    shifted[:, 0] += third
    shifted[:, 2] += third
    boxes, scores = torch.cat([base, shifted]), torch.rand(1500, generator=g)
    classes = torch.randint(0, 80, (750,), generator=g).repeat(2)
    reference = torch.cat([torch.nonzero(classes == c).flatten()[nms(boxes[classes == c], scores[classes == c], 0.5)]
                           for c in classes.unique()])
    ours = grouped_nms(boxes, scores, classes, 0.5, 1333.0)
    assert sorted(ours.tolist()) == sorted(reference.tolist())
    assert torch.all(scores[ours][:-1] >= scores[ours][1:])  # by decreasing score
    offset = nms(boxes + classes[:, None].float() * 1334.0, scores, 0.5)
    assert sorted(offset.tolist()) != sorted(reference.tolist())  # what the float32 offsets alone would give


def test_a_detection_clipped_to_zero_area_is_kept_as_in_detectron2():
    heads = RoIHeads(RoIPooler(7, 1 / 16), nn.Identity(), nn.Identity(), num_classes=1, score_thresh=0.05)
    proposals = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [130.0, 10.0, 170.0, 40.0]])]  # the second right of x=100
    logits = torch.tensor([[0.0, 2.0], [0.0, 3.0]])
    results = heads.inference(logits, torch.zeros(2, 4), proposals, [(80, 100)])[0]
    assert len(results["boxes"]) == 2
    assert results["boxes"][0].tolist() == [100.0, 10.0, 100.0, 40.0]  # clipped to the right edge: zero width
    assert results["scores"][0] == pytest.approx(torch.softmax(torch.tensor([0.0, 3.0]), 0)[1].item())


# ----- no host synchronisation inside a training step ------------------------------------------------------------
def test_training_steps_do_not_wait_for_the_device_between_logging_points(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    calls = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def step(net, batch):
        x, y = batch
        logits = net(x)
        error = 100.0 * (logits.detach().argmax(1) != y).float().mean()
        return {"loss_cls": nn.functional.cross_entropy(logits, y)}, {"error": error}

    g = torch.Generator().manual_seed(0)
    def batches(start):
        return iter(lambda: (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)), None)

    options = TrainerOptions(max_iter=40, output_dir=tmp_path, log_period=20, checkpoint_period=1000, progress=False,
                             accumulate=2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), LRSchedule(0.1), batches, step, options,
                      DistInfo(0, 1, 0, torch.device("cpu")))
    calls.clear()
    for _ in range(10):  # ten iterations, twenty micro-batches, between logging points
        trainer.run_step(trainer.make_batches(0))
    assert calls == []
    trainer.iteration = 0
    calls.clear()
    trainer.train()  # 40 iterations: 2 logging points and the final save and finite-loss checks
    assert len(calls) <= 8, calls
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())


# the only places a detector's training step may wait for the device: the RPN turning its scores into a
# variable number of proposals (and NMS), the FPN pooler splitting RoIs by level, and the multi-scale size
# drawn from the CPU generator (a CPU tensor: no device to wait for); keyed by qualified function name
ALLOWED_SYNC_SITES = {("detection/rpn.py", "RegionProposalNetwork.find_proposals"),
                      ("detection/roi_heads.py", "RoIPooler.forward"),
                      ("detection/transform.py", "DetectionTransform._target_size")}


def _is_mask(index) -> bool:
    """Indexing by a boolean tensor (alone or in a tuple): its result's size depends on the data."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_a_detector_training_step_waits_for_the_device_only_where_it_must(monkeypatch, head):
    calls = []
    hooks = [(torch.Tensor, n, None) for n in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero",
                                               "cpu")]
    hooks += [(torch, "nonzero", None), (torch.Tensor, "__getitem__", lambda args: _is_mask(args[1]))]
    for owner, name, applies in hooks:
        original = getattr(owner, name)

        def counted(*args, _original=original, _applies=applies, **kwargs):
            if _applies is None or _applies(args):
                for frame in inspect.stack()[1:]:
                    path = Path(frame.filename)
                    if path.is_relative_to(ROOT) and not path.is_relative_to(ROOT / "tests"):
                        function = frame.frame.f_code.co_qualname.split(".<locals>")[0]  # a comprehension in it
                        calls.append((path.relative_to(ROOT).as_posix(), function))
                        break
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    levels = {"anchor_sizes": [16, 32, 64, 128, 256], "fpn": {**MODEL_DEFAULTS["fpn"], "out_channels": 16}} if (
        head == "fpn") else {}
    model = tiny_detector(head=head, min_size=[96, 112], **levels).train()
    images = [torch.rand(3, 96, 128), torch.rand(3, 100, 90)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    sum(model(images, targets).values()).backward()
    assert set(calls) <= ALLOWED_SYNC_SITES, set(calls) - ALLOWED_SYNC_SITES
    assert ("detection/roi_heads.py", "RoIPooler.forward") not in calls or head == "fpn"
    assert ("detection/rpn.py", "RegionProposalNetwork.find_proposals") in calls  # the test sees what it counts
