"""Large images: the tile grid, merged tiled predictions against whole-image ones, boxes cut by a tile border,
SAHI's greedy merge by hand, training on tiles (exact resume), and the flags' bad values."""

import numpy as np
import pytest
import torch

from detection.build import build_detector, detector_checkpoint
from detection.data.common import DetectionDataset, GroundTruth
from detection.data.shapes import make_shapes
from detection.predictor import Predictor
from detection.tiling import TiledDataset, Tiling, greedy_merge, predict_tiled, tile_grid
from engine.cli import run_cli
from engine.errors import UserError
from tests.helpers import DEMO_CONFIG, TINY_DETECTOR
from tests.test_detection_model import small_cfg
from tools import eval_det, train_det


def test_tile_grid_by_hand():
    # 200 wide, tiles of 128 overlapping by half: starts 0, 64, then the last aligned to the border at 72
    assert tile_grid(100, 200, 128, 0.5) == [(0, 0, 128, 100), (64, 0, 192, 100), (72, 0, 200, 100)]
    assert tile_grid(64, 64, 64, 0.0) == [(0, 0, 64, 64)]
    assert tile_grid(40, 50, 128) == [(0, 0, 50, 40)]  # a tile larger than the image is the image
    assert len(tile_grid(256, 256, 128, 0.0)) == 4
    for tile, overlap, problem in ((0, 0.2, "at least 32 pixels"), (128, 1.0, "must be in"), (128, -0.1, "must be")):
        with pytest.raises(UserError, match=problem):
            tile_grid(100, 100, tile, overlap)


def _sorted(det):
    order = np.lexsort((det["boxes"][:, 0].numpy(), -det["scores"].numpy()))
    return {k: v[order] for k, v in det.items()}


def test_a_mosaic_tiled_like_its_images_gives_their_detections_shifted():
    cfg = small_cfg()
    cfg["model"]["roi"].update(score_thresh=0.0, detections_per_image=40)
    model = build_detector(cfg, num_classes=3).eval()
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    mosaic = torch.cat([torch.cat(images[:2], dim=2), torch.cat(images[2:], dim=2)], dim=1)  # 192 x 192
    with torch.no_grad():
        alone = model(images)
        tiled = predict_tiled(model, mosaic, tile=96, overlap=0.0, max_detections=400)
    expected = {"boxes": [], "scores": [], "labels": []}
    for k, det in enumerate(alone):
        shift = torch.tensor([96.0 * (k % 2), 96.0 * (k // 2)] * 2)
        for key in expected:
            expected[key].append(det[key] + shift if key == "boxes" else det[key])
    expected = _sorted({k: torch.cat(v) for k, v in expected.items()})
    got = _sorted(tiled)
    assert len(got["scores"]) == len(expected["scores"]) == 160
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_an_object_on_a_tile_border_is_reported_once_whole():
    image = torch.zeros(3, 100, 200)
    obj = torch.tensor([100.0, 30, 140, 70])

    def detect(tiles):  # sees the part of the object inside each tile, scoring a cut one higher
        out = []
        for _tile, (x0, _, x1, _) in zip(tiles, windows, strict=True):
            box = obj.clone()
            box[0::2] = box[0::2].clamp(x0, x1)
            cut = bool(box[0] > obj[0] or box[2] < obj[2])
            present = box[2] > box[0]
            out.append({"boxes": (box - torch.tensor([x0, 0, x0, 0]))[None][:int(present)],
                        "scores": torch.tensor([0.95 if cut else 0.9])[:int(present)],
                        "labels": torch.tensor([1])[:int(present)]})
        return out

    windows = tile_grid(100, 200, 128, 0.5)  # x 0..128 (cuts it at 128), 64..192 and 72..200 (hold it whole)
    result = predict_tiled(detect, image, tile=128, overlap=0.5, batch_size=8)
    assert result["boxes"].tolist() == [obj.tolist()] and result["scores"].tolist() == [pytest.approx(0.9)]


def test_greedy_merge_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 12, 10], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 1, 2])
    out = greedy_merge(boxes, scores, labels, 0.5)
    # box 1 overlaps box 0 by 5 x 10 = 50 of its 70 (0.71 >= 0.5): merged into their union; box 3 is another class
    assert out["boxes"].tolist() == [[0, 0, 12, 10], [50, 50, 60, 60], [0, 0, 10, 10]]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6]) and out["labels"].tolist() == [1, 1, 2]


class _OneImage(DetectionDataset):
    def __init__(self, rec):
        super().__init__(None, True)
        self.records, self.class_names = [rec], ["a"]


def test_tiles_keep_boxes_mostly_inside_and_some_background():
    rec = GroundTruth(1, "big", 256, 128, np.array([[10.0, 10, 50, 50], [100, 0, 140, 40], [200, 80, 250, 120]]),
                      np.array([1, 1, 1]), np.zeros(3, bool))
    tiles = TiledDataset(_OneImage(rec), tile=128, overlap=0.0, min_visible=0.5, background=0.0)
    # tiles x 0..128 and 128..256: box 1 is 28/40 inside the first (kept) and 12/40 inside the second (dropped)
    assert [r.boxes.tolist() for r in tiles.records] == [[[10, 10, 50, 50], [100, 0, 128, 40]], [[72, 80, 122, 120]]]
    empty = GroundTruth(2, "empty", 512, 128, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
    both = _OneImage(rec)
    both.records = [rec, empty]
    assert len(TiledDataset(both, 128, 0.0, background=0.5, seed=3)) == 4  # 2 with objects + 2 of the 4 empty
    assert len(TiledDataset(both, 128, 0.0, background=0.0)) == 2


def test_training_on_tiles_resumes_exactly_and_evaluates_on_tiles(tmp_path, capsys):
    shapes = tmp_path / "shapes"
    make_shapes(shapes, num_train=6, num_val=2, seed=2, min_side=160, max_side=200)
    args = ["--config", DEMO_CONFIG, "--data", str(shapes), "--no-progress", *TINY_DETECTOR, "data.tile=96",
            "data.tile_overlap=0.25", "train.checkpoint_period=2", "train.eval_period=0", "test.analyze=false"]
    assert run_cli(train_det.main, [*args, "--output", str(tmp_path / "once"), "--max-iter", "4"]) == 0
    assert run_cli(train_det.main, [*args, "--output", str(tmp_path / "twice"), "--max-iter", "2"]) == 0
    assert run_cli(train_det.main, ["--output", str(tmp_path / "twice"), "--resume", "--max-iter", "4",
                                    "--no-progress"]) == 0
    once = torch.load(tmp_path / "once" / "model_final.pth", weights_only=True)["state_dict"]
    twice = torch.load(tmp_path / "twice" / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(once[k], twice[k]) for k in once)
    code = run_cli(eval_det.main, ["--checkpoint", str(tmp_path / "once" / "model_final.pth"), "--dataset", "shapes",
                                   "--data", str(shapes), "--tile", "96", "--workers", "0", "--no-progress"])
    assert code == 0 and "coco: AP" in capsys.readouterr().out
    assert run_cli(eval_det.main, ["--checkpoint", str(tmp_path / "once" / "model_final.pth"), "--dataset",
                                   "shapes", "--data", str(shapes), "--tile-overlap", "0.5"]) == 2
    assert "apply with --tile SIZE" in capsys.readouterr().err


def test_predictor_on_tiles_finds_what_the_tiles_find(tmp_path):
    cfg = small_cfg()
    cfg["model"]["roi"]["score_thresh"] = 0.0
    model = build_detector(cfg, num_classes=2).eval()
    torch.save(detector_checkpoint(model, cfg, ["a", "b"]), tmp_path / "det.pth")
    image = np.random.default_rng(0).integers(0, 255, (150, 260, 3), dtype=np.uint8)
    result = Predictor(tmp_path / "det.pth", device="cpu", tile=128, tile_overlap=0.25)(image)
    assert len(result["boxes"]) and (result["boxes"][:, 2] <= 260).all() and (result["boxes"][:, 3] <= 150).all()
    assert (result["boxes"][:, 2] > 128).any()  # detections from the tiles right of the first
    with pytest.raises(UserError, match="--tile-merge 'best'"):
        Tiling(128, 0.2, "best")
