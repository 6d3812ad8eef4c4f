"""Training from anywhere: the normalisation choices against torch.nn references, what training from scratch
trains, synchronised BN over processes, the training diagnostics by hand, the validation loss, early stopping,
and object crops for pre-training on one's own data."""

import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from PIL import Image
from torch import nn

import backbones
from backbones import FrozenBatchNorm2d, SyncBatchNorm2d, convert_norm
from detection.build import build_detector, describe_start, detector_checkpoint, load_detector
from detection.data.crops import crop_with_context, split_images, write_crops
from detection.data.voc import VOCDetection
from detection.inference import validation_losses
from detection.roi_heads import sample_statistics
from engine.checkpoint import find_last, load_checkpoint
from engine.cli import run_cli
from engine.distributed import DistInfo
from engine.errors import UserError
from engine.schedule import LRSchedule
from engine.trainer import Trainer, TrainerOptions
from tests.helpers import voc_xml
from tests.test_detection_model import _images_and_targets, small_cfg
from tools import make_crops


# ----- normalisation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,reference", [("bn", nn.BatchNorm2d), ("gn", lambda c: nn.GroupNorm(32, c))])
def test_backbone_norms_equal_torchvision_resnet_built_with_that_norm_layer(norm, reference):
    """Our ResNet-18 with `norm` gives torchvision's resnet18(norm_layer=...) outputs and gradients, in training."""
    torch.manual_seed(0)
    ours = backbones.build_backbone("resnet18", ["res5"], norm=norm).train()
    theirs = torchvision.models.resnet18(norm_layer=reference).train()
    theirs.load_state_dict({k: v for k, v in backbones.build_model("resnet18").state_dict().items()}, strict=False)
    state = {f"stages.{'stem' if k.split('.')[0] in ('conv1', 'bn1') else 'res' + str(int(k[5]) + 1)}."
             + (k if k.split(".")[0] in ("conv1", "bn1") else k.split(".", 1)[1]): v
             for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    trunk = nn.Sequential(theirs.conv1, theirs.bn1, theirs.relu, theirs.maxpool, theirs.layer1, theirs.layer2,
                          theirs.layer3, theirs.layer4)
    expected, got = trunk(x), ours(x)["res5"]
    torch.testing.assert_close(got, expected)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(ours.stages["stem"].conv1.weight.grad, theirs.conv1.weight.grad)
    kinds = {type(m) for m in ours.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))}
    assert kinds == {nn.BatchNorm2d if norm == "bn" else nn.GroupNorm}


def test_group_norm_takes_32_groups_and_fewer_where_32_does_not_divide_the_channels():
    converted = convert_norm(nn.Sequential(nn.BatchNorm2d(64), nn.BatchNorm2d(8)), "gn")
    assert [(m.num_groups, m.num_channels) for m in converted] == [(32, 64), (8, 8)]


def test_frozen_bn_hand_off_keeps_the_classifiers_statistics_and_affine_map_exactly(tmp_path):
    classifier = backbones.build_model("resnet18", num_classes=5, width=8)
    for m in classifier.modules():
        if isinstance(m, nn.BatchNorm2d):
            for buffer in (m.running_mean, m.weight, m.bias):
                buffer.data.uniform_(-1, 1)
            m.running_var.data.uniform_(0.5, 2)
    path = tmp_path / "model_final.pth"
    torch.save({"arch": "resnet18", "options": {"width": 8}, "state_dict": classifier.state_dict()}, path)
    cfg = small_cfg(weights=str(path))
    model = build_detector(cfg, num_classes=3)
    assert cfg["model"]["norm"] == "frozen_bn" and cfg["model"]["freeze_at"] == 2
    # detectron2's anchors and head initialisation, which the pre-trained figures were measured with
    m = cfg["model"]
    assert (m["round_anchors"], m["anchor_stride_from_image"], m["roi"]["head_init"]) == (False, False, "detectron2")
    assert 0.0009 < model.roi_heads.predictor.bbox_pred.weight.std() < 0.0011
    frozen = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.stages.res3.1.bn2.")}
    expected = classifier.layer2[1].bn2.state_dict()
    assert {k.rsplit(".", 1)[1]: v for k, v in frozen.items()}.keys() == expected.keys() - {"num_batches_tracked"}
    for key, value in frozen.items():
        assert torch.equal(value, expected[key.rsplit(".", 1)[1]])
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.modules() if "Norm" in type(m).__name__)


def test_from_scratch_nothing_is_frozen_and_every_layer_and_norm_trains():
    cfg = small_cfg()
    model = build_detector(cfg, num_classes=3).train()
    assert (cfg["model"]["norm"], cfg["model"]["freeze_at"]) == ("gn", 0)
    # torchvision's anchors (rounded corners, stride from the padded image) and head initialisation (nn.Linear's)
    m = cfg["model"]
    assert (m["round_anchors"], m["anchor_stride_from_image"], m["roi"]["head_init"]) == (True, True, "torchvision")
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
    reference = TorchvisionAnchors().generate_anchors(m["anchor_sizes"], m["aspect_ratios"])
    assert sorted(model.rpn.anchor_generator.cell_anchors_0.tolist()) == sorted(reference.tolist())
    assert model.roi_heads.predictor.bbox_pred.weight.std() > 0.01  # not detectron2's 0.001
    assert describe_start(cfg).startswith("no --weights: training from scratch (He-initialised convolutions, "
                                          "torchvision's anchors and head initialisation): every layer trains")
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    assert isinstance(model.backbone.stages["stem"].bn1, nn.GroupNorm)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images, targets = _images_and_targets()
    sum(model(images, targets).values()).backward()
    opt.step()
    after = model.state_dict()
    for key in ("backbone.stages.stem.conv1.weight", "backbone.stages.stem.bn1.weight",
                "backbone.stages.stem.bn1.bias", "backbone.stages.res2.0.conv1.weight",
                "roi_heads.box_head.res5.1.bn2.weight"):
        assert not torch.equal(before[key], after[key]), key


@pytest.mark.parametrize("head", ["c4", "fpn"])
@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "syncbn", "gn"])
def test_every_norm_builds_trains_a_step_and_survives_a_checkpoint(tmp_path, head, norm):
    extra = {"anchor_sizes": [8, 16, 32, 64, 128]} if head == "fpn" else {}
    cfg = small_cfg(head=head, norm=norm, freeze_at=1, **extra)
    if head == "fpn":
        head_norm = "none" if norm == "frozen_bn" else norm
        cfg["model"]["fpn"].update(out_channels=16, norm=head_norm)
        cfg["model"]["roi"].update(fc_dim=32, num_conv=2, conv_dim=16, num_fc=1, head_norm=head_norm)
    model = build_detector(cfg, num_classes=3).train()
    images, targets = _images_and_targets()
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.stages["stem"].conv1.weight.grad is None if head == "c4" else True
    trained = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, SyncBatchNorm2d))]
    assert bool(trained) == (norm != "frozen_bn")
    path = tmp_path / "det.pth"
    torch.save(detector_checkpoint(model, cfg, ["a", "b", "c"]), path)
    loaded, saved_cfg, _ = load_detector(path)
    assert saved_cfg["model"]["norm"] == norm
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(images), loaded.eval()(images), strict=True):
            torch.testing.assert_close(a["scores"], b["scores"])


def test_building_a_detector_leaves_the_model_defaults_alone():
    from detection.build import MODEL_DEFAULTS

    before = copy.deepcopy(MODEL_DEFAULTS)
    cfg = {"model": {**MODEL_DEFAULTS, "backbone": "resnet18", "backbone_options": {"width": 8}}}  # a shallow copy
    build_detector(cfg, num_classes=2)
    assert cfg["model"]["roi"]["head_init"] == "torchvision" and before == MODEL_DEFAULTS


def test_fine_tuning_a_detector_of_ours_keeps_the_norm_and_anchors_it_was_trained_with(tmp_path):
    cfg = small_cfg()  # from scratch: GroupNorm, torchvision's anchors and head initialisation
    path = tmp_path / "det.pth"
    torch.save(detector_checkpoint(build_detector(cfg, num_classes=3), cfg, ["a", "b", "c"]), path)
    tuned = small_cfg(weights=str(path))
    build_detector(tuned, num_classes=3)
    m = tuned["model"]
    assert (m["norm"], m["round_anchors"], m["anchor_stride_from_image"]) == ("gn", True, True)
    assert (m["roi"]["head_init"], m["freeze_at"]) == ("torchvision", 2)


def _sync_bn_worker(rank: int, port: int, x: torch.Tensor, weight: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    bn = SyncBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(weight)
    part = x[:3] if rank == 0 else x[3:]  # unequal shares: 3 and 2 images
    part = part.clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).sum().backward()
    dist.all_reduce(bn.weight.grad)
    out[rank] = {"y": y.detach(), "x_grad": part.grad, "w_grad": bn.weight.grad, "mean": bn.running_mean.clone(),
                 "var": bn.running_var.clone()}
    dist.destroy_process_group()


def test_sync_bn_over_two_gloo_processes_equals_bn_on_the_whole_batch():
    torch.manual_seed(0)
    x, weight = torch.randn(5, 3, 4, 6) * 3 + 1, torch.rand(3) + 0.5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_sync_bn_worker, args=(port, x, weight, out), nprocs=2)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(weight)
    whole = x.clone().requires_grad_(True)
    y = bn(whole)
    (y * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).sum().backward()
    torch.testing.assert_close(torch.cat([out[0]["y"], out[1]["y"]]), y.detach())
    torch.testing.assert_close(torch.cat([out[0]["x_grad"], out[1]["x_grad"]]), whole.grad)
    for rank in (0, 1):
        torch.testing.assert_close(out[rank]["w_grad"], bn.weight.grad)
        torch.testing.assert_close(out[rank]["mean"], bn.running_mean)
        torch.testing.assert_close(out[rank]["var"], bn.running_var)


def test_sync_bn_outside_a_process_group_is_batchnorm():
    x = torch.randn(4, 3, 5, 5)
    sync, plain = SyncBatchNorm2d(3), nn.BatchNorm2d(3)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


# ----- diagnostics -----------------------------------------------------------------------------------------------
def test_roi_sampling_figures_by_hand():
    # 6 sampled RoIs: labels 2, 1, 0, 0, 0 and one that does not count (-1)
    labels = torch.tensor([2, 1, 0, 0, 0, -1])
    logits = torch.tensor([[0, 0, 9.0], [0, 0, 9.0], [9.0, 0, 0], [0, 9.0, 0], [9.0, 0, 0], [9.0, 0, 0]])
    stats = sample_statistics(logits, labels)
    # 5 count; 2 foreground; correct: RoI 0 (2 -> 2), RoI 2 and 4 (background) = 3 of 5; foreground: 1 of 2
    assert {k: round(float(v), 6) for k, v in stats.items()} == {"roi_fg_fraction": 0.4, "roi_accuracy": 0.6,
                                                                 "roi_fg_accuracy": 0.5}


def test_rpn_anchor_counts_by_hand():
    cfg = small_cfg(norm="frozen_bn")
    cfg["model"]["rpn"].update(batch_size_per_image=16, positive_fraction=0.5, allowed_border=-1.0)
    model = build_detector(cfg, num_classes=1).train()
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 11, 10], [50, 50, 60, 60], [70, 70, 90, 90], [0, 0, 30, 30]])
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[70.0, 70, 90, 91]]), "labels": torch.tensor([1])}]
    logits, deltas = torch.zeros(2, 5), torch.zeros(2, 5, 4)
    model.rpn.losses(anchors, logits, deltas, targets, [(100, 100), (100, 100)])
    # image 1: anchors 0 (IoU 1) and 1 (IoU 10/11 >= 0.7) positive; 2, 3 negative (IoU 0); 4 (IoU 1/9) negative
    # image 2: anchor 3 positive (IoU 400/420); 0, 1, 2, 4 negative. Per image: (2 + 1) / 2 and (3 + 4) / 2
    assert float(model.rpn.stats["rpn_pos_anchors"]) == 1.5
    assert float(model.rpn.stats["rpn_neg_anchors"]) == 3.5


def test_training_stats_reach_the_model_after_a_step():
    model = build_detector(small_cfg(), num_classes=2).train()
    images, targets = _images_and_targets()
    model(images, targets)
    assert set(model.training_stats()) == {"rpn_pos_anchors", "rpn_neg_anchors", "roi_fg_fraction",
                                           "roi_accuracy", "roi_fg_accuracy"}


# ----- validation loss -------------------------------------------------------------------------------------------
class _ListDataset(torch.utils.data.Dataset):
    """Images and targets in memory, in the shape `validation_losses` reads."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def without_augmentation(self):
        return self


def test_validation_loss_is_the_image_weighted_training_loss_with_statistics_left_alone():
    cfg = small_cfg()
    cfg["model"]["rpn"].update(batch_size_per_image=100000)  # every anchor and RoI counts: no random draw
    cfg["model"]["roi"].update(batch_size_per_image=100000)
    model = build_detector(cfg, num_classes=2)
    images, targets = _images_and_targets()
    items = [*zip(images, targets, strict=True), (images[0], targets[0])]
    model.eval()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    got = validation_losses(model, _ListDataset(items), torch.device("cpu"), batch_size=2, workers=0)
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    by_hand = []
    for batch in (items[:2], items[2:]):  # the batches of 2 it runs, norms in inference mode, at the test size
        model.train()
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d,)) or m is model.transform:
                m.eval()
        with torch.no_grad():
            losses = model([image for image, _ in batch], [target for _, target in batch])
        by_hand.append({k: float(v) * len(batch) for k, v in losses.items()})
    expected = {k: (by_hand[0][k] + by_hand[1][k]) / 3 for k in by_hand[0]}  # a mean over images
    assert got.keys() == {"loss", *expected}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key
    assert got["loss"] == pytest.approx(sum(expected.values()), rel=1e-4)


# ----- early stopping --------------------------------------------------------------------------------------------
def test_patience_stops_at_the_evaluation_it_runs_out_and_keeps_the_best(tmp_path):
    model = nn.Linear(2, 1)
    scores = iter([10.0, 30.0, 20.0, 25.0, 29.0, 50.0])  # new bests at evaluations 1 and 2; 3, 4 are not
    saved = []
    options = TrainerOptions(max_iter=60, output_dir=tmp_path, eval_period=10, checkpoint_period=100,
                             progress=False, best_metric="AP", patience=2)

    def step(net, batch):
        return {"loss": net(batch).pow(2).mean()}, {}

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), LRSchedule(0.01),
                      lambda start: iter(lambda: torch.ones(4, 2), None), step, options,
                      DistInfo(0, 1, 0, torch.device("cpu")), evaluate=lambda m: {"AP": next(scores)},
                      save_best=lambda: saved.append(trainer.iteration))
    trainer.train()
    assert trainer.stopped_early == 40 and trainer.iteration == 40
    assert saved == [10, 20] and trainer.best == {"metric": "AP", "value": 30.0, "iteration": 20}
    assert load_checkpoint(find_last(tmp_path))["stopped_early"] == 40
    resumed = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), LRSchedule(0.01),
                      lambda start: iter(lambda: torch.ones(4, 2), None), step, options,
                      DistInfo(0, 1, 0, torch.device("cpu")), evaluate=lambda m: {"AP": 0.0})
    resumed.resume_from(True)
    resumed.train()
    assert resumed.iteration == 40  # a stopped run stays stopped


def test_patience_needs_periodic_evaluation(tmp_path):
    with pytest.raises(UserError, match="train.patience .* needs train.eval_period"):
        Trainer(nn.Linear(2, 1), torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1), LRSchedule(0.1),
                lambda start: iter([]), lambda m, b: ({}, {}),
                TrainerOptions(max_iter=5, output_dir=tmp_path, patience=3), DistInfo(0, 1, 0, torch.device("cpu")))


# ----- object crops ----------------------------------------------------------------------------------------------
def _voc_folder(root, images):
    """A VOC-layout folder: `images` maps a stem to (width, height, [(class, box), ...])."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    for stem, (width, height, objects) in images.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / "JPEGImages" /
                                                                                       f"{stem}.png")
        (root / "Annotations" / f"{stem}.xml").write_text(
            voc_xml([(name, box, False) for name, box in objects], width, height, f"{stem}.png"))
    return root


def test_a_crop_is_the_box_grown_by_its_context_then_resized():
    y, x = np.mgrid[0:40, 0:60]
    image = np.stack([x * 2 + y * 2, x * 3, y * 4], axis=-1).astype(np.uint8)  # smooth ramps, every pixel its own
    crop = crop_with_context(image, [10, 8, 30, 28], context=0.25, size=30)
    # 20 x 20 box grown by 5 on each side: rows 3..33, columns 5..35 (31 x 31 pixels), area-resized to 30 x 30
    expected = np.asarray(Image.fromarray(image[3:34, 5:36]).resize((30, 30), Image.BOX))
    assert crop.shape == (30, 30, 3)
    assert (crop[0, 0] == image[3, 5]).all() and (crop[-1, -1] == image[33, 35]).all()
    assert np.abs(crop.astype(int) - expected.astype(int)).max() <= 2


def test_crops_of_a_voc_folder_by_class_with_background_and_held_out_images(tmp_path):
    root = _voc_folder(tmp_path / "voc", {f"im{i}": (80, 60, [("cat", [2, 2, 30, 40])] + (
        [("dog", [40, 10, 70, 50]), ("dog", [5, 45, 20, 58])] if i % 2 else [])) for i in range(10)})
    assert make_crops.main(["--dataset", "voc", "--data", str(root), "--train-split", str(_list(root, 10)),
                            "--output", str(tmp_path / "crops"), "--size", "16", "--val-fraction", "0.3"]) == 0
    train = {d.name: len(list(d.iterdir())) for d in (tmp_path / "crops" / "train").iterdir()}
    val = {d.name: len(list(d.iterdir())) for d in (tmp_path / "crops" / "val").iterdir()}
    assert train["cat"] + val["cat"] == 10 and train["dog"] + val["dog"] == 10  # every object once
    # 30% of the images held out (every image has one cat), one more where that left the dogs on one side
    assert 3 <= val["cat"] <= 4 and train.keys() == val.keys() == {"cat", "dog", "background"}
    train_images = {p.name.split("_")[0] for d in (tmp_path / "crops" / "train").iterdir() for p in d.iterdir()}
    val_images = {p.name.split("_")[0] for d in (tmp_path / "crops" / "val").iterdir() for p in d.iterdir()}
    assert not train_images & val_images  # held-out images are never trained on
    assert run_cli(make_crops.main, ["--dataset", "voc", "--data", str(root), "--train-split",
                                     str(_list(root, 10)), "--output", str(tmp_path / "crops")]) == 2  # refused


def _list(root, count):
    path = root / "all.txt"
    path.write_text("".join(f"im{i}\n" for i in range(count)))
    return path


def test_held_out_images_give_every_class_to_both_sides():
    class Records:
        def __init__(self, labels):
            self.records = [type("R", (), {"labels": np.array(lab), "ignore": np.zeros(len(lab), bool)})
                            for lab in labels]

        def __len__(self):
            return len(self.records)

    data = Records([[1]] * 18 + [[2], [2]])  # class 2 in two images only
    for seed in range(20):
        train, val = split_images(data, 0.1, np.random.default_rng(seed))
        assert sorted(train + val) == list(range(20))
        assert {18, 19} & set(train) and {18, 19} & set(val)


def test_write_crops_leaves_out_ignored_objects(tmp_path):
    root = _voc_folder(tmp_path / "voc", {"a": (50, 50, [("cat", [1, 1, 20, 20])])})
    xml = (root / "Annotations" / "a.xml").read_text().replace("</annotation>", "") + (
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>25</xmin><ymin>25</ymin><xmax>45</xmax>"
        "<ymax>45</ymax></bndbox></object></annotation>")
    (root / "Annotations" / "a.xml").write_text(xml)
    (root / "list.txt").write_text("a\n")
    dataset = VOCDetection(root, "voc", str(root / "list.txt"), train=True, class_names=["cat"])
    counts = write_crops(dataset, tmp_path / "out", backgrounds_per_image=0)
    assert dict(counts) == {"cat": 1, "background": 0} and not (tmp_path / "out" / "background").exists()


def test_a_detector_saved_before_the_norm_and_start_keys_existed_loads_as_it_was(tmp_path):
    # built as every detector was then: frozen BN, detectron2's anchors (corners not rounded)
    cfg = small_cfg(head="fpn", anchor_sizes=[8, 16, 32, 64, 128], norm="frozen_bn", freeze_at=2,
                    round_anchors=False, anchor_stride_from_image=False)
    cfg["model"]["fpn"]["out_channels"] = 16
    model = build_detector(cfg, num_classes=2).eval()
    state = detector_checkpoint(model, cfg, ["a", "b"])
    for key in ("norm", "freeze_at", "round_anchors", "anchor_stride_from_image"):  # what such a file's config lacks
        del state["config"]["model"][key]
    del state["config"]["model"]["fpn"]["norm"]
    for key in ("num_conv", "conv_dim", "num_fc", "head_norm", "head_init"):
        del state["config"]["model"]["roi"][key]
    torch.save(state, tmp_path / "old.pth")
    loaded, saved_cfg, _ = load_detector(tmp_path / "old.pth")
    assert saved_cfg["model"]["norm"] == "frozen_bn" and saved_cfg["model"]["round_anchors"] is False
    images, _ = _images_and_targets()
    with torch.no_grad():
        for a, b in zip(model(images), loaded.eval()(images), strict=True):
            torch.testing.assert_close(a["boxes"], b["boxes"])


def test_head_init_torchvision_starts_the_box_head_as_torchvision_does():
    """`model.roi.head_init: torchvision` draws the FCs and class scores exactly as torchvision's TwoMLPHead and
    FastRCNNPredictor do from the same seed; the default keeps detectron2's small predictor (std 0.01 / 0.001)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TorchvisionPredictor
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    from detection.roi_heads import FastRCNNPredictor, FCBoxHead

    torch.manual_seed(0)
    head, predictor = FCBoxHead.fresh(16, 7, 64, init="torchvision"), FastRCNNPredictor(64, 3, init="torchvision")
    torch.manual_seed(0)
    ref_head, ref_predictor = TwoMLPHead(16 * 49, 64), TorchvisionPredictor(64, 4)
    pairs = ((head.fc6, ref_head.fc6), (head.fc7, ref_head.fc7), (predictor.cls_score, ref_predictor.cls_score))
    for ours, ref in pairs:
        torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
        torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    assert predictor.bbox_pred.weight.abs().max() <= 64 ** -0.5  # nn.Linear's bound, 1/sqrt(fan_in)
    detectron2_style = FastRCNNPredictor(256, 80)
    assert 0.009 < detectron2_style.cls_score.weight.std() < 0.011
    assert 0.0009 < detectron2_style.bbox_pred.weight.std() < 0.0011

    with pytest.raises(ValueError, match="head initialisation"):
        FastRCNNPredictor(64, 3, init="xavier")

    cfg = small_cfg(head="fpn", norm="bn", freeze_at=0, anchor_sizes=[8, 16, 32, 64, 128])
    cfg["model"]["roi"]["head_init"] = "torchvision"
    model = build_detector(cfg, num_classes=3)
    assert model.roi_heads.predictor.bbox_pred.weight.std() > 0.01  # not detectron2's 0.001


def test_an_fpn_training_step_equals_torchvisions_fasterrcnn():
    """One training step of our FPN detector against torchvision's `FasterRCNN` (its FPN, RPN, RoI heads and
    losses) on the same trainable-BN backbone, head weights and batch, with torchvision's anchors and every anchor
    and RoI sampled: the four losses and the backbone's gradients agree to float32 rounding."""
    from dataclasses import replace

    from benchmarks.bench_learning import Work, initial_classifier, loss_parity

    work = replace(Work(), width=8, fpn_channels=16, fc_dim=32, min_size=64,
                   fpn_anchor_sizes=[16, 32, 64, 128, 256])
    torch.manual_seed(0)
    batch = [(torch.rand(3, 64, 96), {"boxes": torch.tensor([[8.0, 10.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]),
                                      "labels": torch.tensor([1, 1])}),
             (torch.rand(3, 80, 64), {"boxes": torch.tensor([[5.0, 30.0, 45.0, 75.0]]), "labels": torch.tensor([1])})]
    _, loss_diff, grad_diff, _ = loss_parity(work, "torchvision-fpn", initial_classifier(work, 0, None), batch,
                                             pretrained=False)
    assert loss_diff < 1e-5 and grad_diff < 1e-3
