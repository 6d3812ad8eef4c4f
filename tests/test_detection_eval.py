"""Detection metrics: COCO AP against pycocotools and published numbers, VOC AP against hand-checked cases
and an independent implementation's published values, results files, and the eval_det tool."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.data.common import GroundTruth
from detection.evaluation import (
    evaluate_coco_files,
    read_voc_results,
    voc_ap,
    voc_evaluate,
    write_voc_results,
)
from engine.cli import run_cli
from engine.errors import UserError
from tests.helpers import voc_xml
from tools import eval_det


def _gt(image_id, boxes, labels, ignore=None, name=None):
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.array(ignore, bool)
    return GroundTruth(image_id, name or f"2007/{image_id:06d}", 100, 100, boxes, np.array(labels, np.int64),
                       ignore)


def _det(boxes, scores, labels):
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": np.array(scores, np.float64),
            "labels": np.array(labels, np.int64)}


def test_voc_ap_hand_checked_case_with_difficult_duplicates_and_missing_classes():
    gts = [_gt(1, [[10, 10, 50, 50], [60, 60, 90, 90], [0, 0, 5, 5]], [1, 1, 3], ignore=[False, True, True]),
           _gt(2, [[20, 20, 40, 40]], [1])]
    dets = {1: _det([[11, 11, 50, 50], [12, 10, 49, 50], [60, 61, 90, 90], [0, 70, 10, 80], [10, 10, 50, 50]],
                    [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 1, 1, 2])}
    # class 1: TP (0.9), duplicate FP (0.8), the difficult box is ignored (0.7), FP (0.6); image 2 is missed.
    # recall 1/2, 1/2, 1/2 and precision 1, 1/2, 1/3 over 2 positives.
    r12 = voc_evaluate(dets, gts, ["a", "b", "c"], use_07_metric=False)
    r07 = voc_evaluate(dets, gts, ["a", "b", "c"], use_07_metric=True)
    assert r12["per_class"]["a"] == pytest.approx(50.0)  # area: 0.5 x precision 1
    assert r07["per_class"]["a"] == pytest.approx(100 * 6 / 11)  # 11-point: 1 at recall 0..0.5, then 0
    assert r12["per_class"]["b"] is None and r12["per_class"]["c"] is None  # no (non-difficult) ground truth
    assert r12["mAP"] == pytest.approx(50.0) and r07["mAP"] == pytest.approx(100 * 6 / 11)
    recall, precision = r12["curves"]["a"]
    assert recall.tolist() == [0.5, 0.5, 0.5] and precision.tolist() == pytest.approx([1, 0.5, 1 / 3])


def test_voc_ap_edge_cases_by_hand():
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=True) == pytest.approx(
        (6 * 1.0 + 5 * 0.5) / 11)
    gts = [_gt(1, [[0, 0, 10, 10]], [1]), _gt(2, [[0, 0, 10, 10]], [1])]
    assert voc_evaluate({}, gts, ["a"])["mAP"] == 0.0  # no detections at all
    perfect = {1: _det([[0, 0, 10, 10]], [0.3], [1]), 2: _det([[0, 0, 10, 10]], [0.2], [1])}
    assert voc_evaluate(perfect, gts, ["a"])["mAP"] == pytest.approx(100.0)
    # IoU exactly 0.5 counts (the devkit's ">="): a 10x10 box against a 10x20 box covering it
    half = {1: _det([[0, 0, 10, 20]], [0.5], [1])}
    assert voc_evaluate(half, gts[:1], ["a"])["mAP"] == pytest.approx(100.0)
    with pytest.raises(UserError, match="not in the ground truth"):
        voc_evaluate({9: _det([[0, 0, 1, 1]], [1.0], [1])}, gts, ["a"])


def _read_case(folder: Path):
    """rafaelpadilla's text format: `cls x y w h` / `cls conf x y w h`, boxes inclusive of x + w (the +1
    convention), i.e. the continuous box [x, x + w + 1)."""
    gts, dets = [], {}
    for i, path in enumerate(sorted((folder / "gts").glob("*.txt"))):
        g = np.array([[float(v) for v in line.split()[1:]] for line in path.read_text().splitlines() if line.strip()])
        gts.append(_gt(i, np.c_[g[:, :2], g[:, :2] + g[:, 2:] + 1], np.ones(len(g))))
        d = np.array([[float(v) for v in line.split()[1:]] for line in (folder / "dets" / path.name).read_text()
                     .splitlines() if line.strip()]).reshape(-1, 5)
        dets[i] = _det(np.c_[d[:, 1:3], d[:, 1:3] + d[:, 3:] + 1], d[:, 0], np.ones(len(d)))
    return gts, dets


@pytest.mark.parametrize("iou,ap11,ap_all", [(0.1, 0.3333333333, 0.3371980676), (0.3, 0.2683982683, 0.2456866804),
                                             (0.5, 0.0303030303, 0.0222222222), (0.75, 0.0, 0.0)])
def test_voc_ap_equals_an_independent_implementation(shared_data, iou, ap11, ap_all):
    gts, dets = _read_case(shared_data / "rafaelpadilla-review-odm" / "tests" / "test_case_1")
    assert voc_evaluate(dets, gts, ["object"], True, iou)["mAP"] / 100 == pytest.approx(ap11, abs=1e-9)
    assert voc_evaluate(dets, gts, ["object"], False, iou)["mAP"] / 100 == pytest.approx(ap_all, abs=1e-9)


def test_devkit_results_files_round_trip(tmp_path):
    gts = [_gt(0, [[10, 10, 50, 50]], [1], name="2007/000005"), _gt(1, [[5, 5, 20, 30]], [2], name="2007/000007")]
    dets = {0: _det([[10.5, 10, 50, 49.5], [0, 0, 9, 9]], [0.9, 0.4], [1, 2]), 1: _det([[5, 5, 20, 30]], [0.8], [2])}
    paths = write_voc_results(tmp_path, "test", dets, gts, ["cat", "dog"])
    assert [p.name for p in paths] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert paths[0].read_text() == "000005 0.900000 11.50 11.00 50.00 49.50\n"  # 1-based x1, y1
    back = read_voc_results(tmp_path, "test", gts, ["cat", "dog"])
    for image_id, det in dets.items():
        order = np.argsort(-det["scores"])
        assert np.allclose(back[image_id]["boxes"][np.argsort(-back[image_id]["scores"])], det["boxes"][order])
    assert voc_evaluate(back, gts, ["cat", "dog"])["mAP"] == voc_evaluate(dets, gts, ["cat", "dog"])["mAP"]
    paths[1].write_text("000007 0.5 1 2 3\n")
    with pytest.raises(UserError, match="comp4_det_test_dog.txt:1: expected"):
        read_voc_results(tmp_path, "test", gts, ["cat", "dog"])
    paths[1].write_text("999999 0.5 1 2 3 4\n")
    with pytest.raises(UserError, match="image '999999' is not in the test set"):
        read_voc_results(tmp_path, "test", gts, ["cat", "dog"])


def _random_coco(tmp_path, seed=0, images=30):
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in (1, 3, 7)]}
    results = []
    for i in range(1, images + 1):
        gt["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            w, h = rng.uniform(4, 140), rng.uniform(4, 100)
            cat = int(rng.choice([1, 3, 7]))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.8:
                jitter = rng.normal(0, 6, 4)
                size = [max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
                results.append({"image_id": i, "category_id": cat if rng.random() < 0.9 else 1,
                                "bbox": [x + jitter[0], y + jitter[1], *size],
                                "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):
            results.append({"image_id": i, "category_id": 3, "bbox": [*rng.uniform(0, 400, 2), 30, 30],
                            "score": float(rng.random())})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    return tmp_path / "gt.json", tmp_path / "dt.json"


def test_coco_ap_equals_pycocotools_run_directly_and_the_faster_backend(tmp_path):
    gt_file, dt_file = _random_coco(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        direct = COCOeval(gt, gt.loadRes(str(dt_file)), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    ours = evaluate_coco_files(gt_file, dt_file)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert [ours[n] for n in names] == [100 * v for v in direct.stats]
    fast = evaluate_coco_files(gt_file, dt_file, backend="faster_coco_eval")
    assert [fast[n] for n in names] == pytest.approx([ours[n] for n in names], abs=1e-10)


def test_coco_ap_matches_the_published_cocoapi_numbers(shared_data):
    folder = shared_data / "coco-val2014-100-eval"
    line = next(x for x in (folder / "expected_stats.txt").read_text().splitlines() if x.startswith("bbox "))
    expected = [100 * float(v) for v in line.split()[1:]]
    for backend in ("pycocotools", "faster_coco_eval"):
        got = evaluate_coco_files(folder / "instances_val2014_100.json",
                                  folder / "instances_val2014_fakebbox100_results.json", backend)
        per_class = got.pop("per_class")
        assert list(got.values()) == pytest.approx(expected, abs=1e-10)
        assert len(per_class) == 80


def test_per_class_coco_ap_equals_cocoeval_restricted_to_that_category(shared_data):
    """Each category's AP from the one accumulated table equals a separate COCOeval run on that category alone
    (pycocotools' own `params.catIds`), and a category without ground truth is None (n/a), not -100."""
    folder = shared_data / "coco-val2014-100-eval"
    gt_file, dt_file = folder / "instances_val2014_100.json", folder / "instances_val2014_fakebbox100_results.json"
    got = evaluate_coco_files(gt_file, dt_file)["per_class"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(dt_file))
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    with_gt = {a["category_id"] for a in gt.dataset["annotations"]}
    for cat_id in [1, 3, 18, 62, next(c for c in names if c not in with_gt)]:
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.catIds = [cat_id]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        alone = evaluator.stats[0]
        assert got[names[cat_id]] == (None if alone == -1 else pytest.approx(100 * alone, abs=1e-10)), cat_id


def test_eval_det_tool_on_coco_and_devkit_results(tmp_path, capsys):
    gt_file, dt_file = _random_coco(tmp_path)
    out = tmp_path / "m.json"
    assert run_cli(eval_det.main, ["--annotations", str(gt_file), "--results", str(dt_file), "--json", str(out)]) == 0
    body = json.loads(out.read_text())
    assert set(body) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
                         "per_class"}
    assert set(body["per_class"]) == {"c1", "c3", "c7"}
    assert run_cli(eval_det.main, ["--annotations", str(gt_file), "--results", str(dt_file), "--metric", "voc07",
                                   "--json", str(out), "--output", str(tmp_path / "plots")]) == 0
    voc = json.loads(out.read_text())
    assert set(voc) == {"mAP", "per_class"} and set(voc["per_class"]) == {"c1", "c3", "c7"}
    assert (tmp_path / "plots" / "pr_curves_voc07.png").stat().st_size > 0
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"image_id\": 1}]")
    assert run_cli(eval_det.main, ["--annotations", str(gt_file), "--results", str(bad)]) == 2
    assert "bad.json: detection 0 needs image_id, category_id, bbox and score" in capsys.readouterr().err
    bad.write_text(json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    assert run_cli(eval_det.main, ["--annotations", str(gt_file), "--results", str(bad)]) == 2
    assert "image_id are not in the ground truth" in capsys.readouterr().err


def test_eval_det_tool_on_a_vocdevkit(tmp_path, capsys):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True)
    (base / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    (base / "Annotations" / "000001.xml").write_text(voc_xml([("dog", (11, 11, 50, 50), False)], 100, 100))
    (base / "Annotations" / "000002.xml").write_text(voc_xml([("cat", (1, 1, 20, 20), False),
                                                              ("dog", (30, 5, 40, 30), True)], 100, 100))
    results = tmp_path / "results"
    results.mkdir()
    (results / "comp4_det_test_dog.txt").write_text("000001 0.9 11 11 50 50\n000002 0.8 30 5 40 30\n")
    (results / "comp4_det_test_cat.txt").write_text("000002 0.7 40 30 59 39\n000002 0.6 1 1 20 20\n")
    args = ["--dataset", "voc07", "--data", str(tmp_path / "VOCdevkit"), "--split", "test", "--results",
            str(results), "--json", str(tmp_path / "m.json")]
    assert run_cli(eval_det.main, [*args, "--metric", "voc07"]) == 0
    per_class = json.loads((tmp_path / "m.json").read_text())["per_class"]
    assert per_class["dog"] == pytest.approx(100.0)  # the difficult dog is ignored, not a false positive
    assert per_class["cat"] == pytest.approx(100 * (6 * 0.5 + 5 * 0.5) / 11)  # TP at rank 2: precision 1/2
    assert run_cli(eval_det.main, [*args, "--metric", "voc12"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["per_class"]["cat"] == pytest.approx(50.0)
    assert "mAP" in capsys.readouterr().out


def test_eval_det_writes_submission_files_for_an_unannotated_test_split(tmp_path, capsys):
    """VOC2012 test has no public annotations: --no-eval runs the detector and writes devkit files only."""
    import torch
    from PIL import Image

    from backbones.layers import calibrate_frozen_batchnorm
    from detection.build import MODEL_DEFAULTS, build_detector, detector_checkpoint
    from detection.data.voc import VOC_CLASSES
    from engine.checkpoint import save_checkpoint

    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True)
    (base / "ImageSets" / "Main" / "test.txt").write_text("2008_000001\n2008_000002\n")
    rng = np.random.default_rng(0)
    for name, (h, w) in (("2008_000001", (90, 120)), ("2008_000002", (100, 80))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")

    cfg = {"model": {**MODEL_DEFAULTS, "backbone": "resnet18", "backbone_options": {"width": 8}, "min_size": [96],
                     "max_size": 160}}
    torch.manual_seed(0)
    model = build_detector(cfg, len(VOC_CLASSES)).eval()
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.weight.normal_(0, 0.3)
        calibrate_frozen_batchnorm(model, lambda: model([torch.rand(3, 90, 120)]))
    save_checkpoint(detector_checkpoint(model, cfg, list(VOC_CLASSES)), tmp_path / "det.pth")

    out = tmp_path / "results" / "VOC2012" / "Main"
    args = ["--checkpoint", str(tmp_path / "det.pth"), "--dataset", "voc07++12", "--data", str(tmp_path / "VOCdevkit"),
            "--split", "test", "--workers", "0", "--batch-size", "1"]
    assert run_cli(eval_det.main, args) == 2  # without --no-eval the missing annotations are an error
    assert "Annotations/2008_000001.xml: annotation file not found" in capsys.readouterr().err
    assert run_cli(eval_det.main, [*args, "--no-eval", "--output", str(out)]) == 0
    files = sorted(out.glob("comp4_det_test_*.txt"))
    assert len(files) == 20
    lines = [line.split() for f in files for line in f.read_text().splitlines()]
    image = np.asarray(Image.open(base / "JPEGImages" / "2008_000001.jpg"), dtype=np.float32) / 255
    with torch.no_grad():
        expected = model([torch.from_numpy(image).permute(2, 0, 1)])[0]
    mine = sorted((float(s), [float(v) for v in box]) for name, s, *box in lines if name == "2008_000001")
    assert len(mine) == len(expected["scores"]) > 0
    best = int(expected["scores"].argmax())
    np.testing.assert_allclose(mine[-1][1], expected["boxes"][best].numpy() + np.array([1, 1, 0, 0]), atol=0.01)
    assert f"{len(lines)} detections -> 20 results file(s)" in capsys.readouterr().out
