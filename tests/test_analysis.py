"""Error analysis: TIDE against the authors' package (tidecv), the confusion matrix and best-F1 thresholds by
hand, the files `--analyze` writes, `score_thresh="best"`, and inputs that leave nothing to analyse."""

import importlib
import json
import sys
import types

import numpy as np
import pytest

from detection.data.common import GroundTruth
from detection.evaluation.analysis import analyze, best_f1_thresholds, confusion_matrix, threshold_curve
from detection.evaluation.tide import MAIN_ERRORS, TideRun, tide


@pytest.fixture(scope="module")
def tidecv():
    """The authors' TIDE. It imports seaborn, pandas and appdirs for plotting and downloads only; where those
    are absent, empty stand-ins are enough for evaluating."""
    stubs = {"seaborn": {"set_palette": lambda *a, **k: None, "color_palette": lambda *a, **k: [(0, 0, 0)] * 10,
                         "set": lambda *a, **k: None},
             "pandas": {}, "appdirs": {"user_data_dir": lambda *a, **k: "/nonexistent"}}
    added = []
    for name, attributes in stubs.items():
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.SimpleNamespace(**attributes)
            added.append(name)
    try:
        yield pytest.importorskip("tidecv")
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _gt(image_id, boxes, labels, ignore=None):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool)
    return GroundTruth(image_id, f"{image_id}.jpg", 200, 200, boxes, np.asarray(labels, np.int64), ignore)


def _det(boxes, labels, scores):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
            "scores": np.asarray(scores, np.float64)}


def every_error_case():
    """Two images with one error of each type, and an image with only a background detection."""
    records = [
        _gt(1, [[0, 0, 40, 40], [100, 100, 140, 140], [50, 0, 90, 40], [150, 150, 190, 190]], [1, 1, 2, 2]),
        _gt(2, [[10, 10, 60, 60], [120, 20, 170, 70]], [2, 1], ignore=[False, True]),
        _gt(3, [], []),
    ]
    detections = {
        1: _det([[0, 0, 40, 40],            # true positive (class 1)
                 [1, 1, 41, 41],            # Dupe: the same box again, already taken
                 [100, 100, 125, 125],      # Loc: IoU 0.39 with its class-1 box
                 [50, 0, 90, 40],           # Cls: a class-2 box called class 1
                 [150, 150, 175, 175],      # Both: class 1 on a class-2 box at IoU 0.39
                 [0, 160, 30, 190]],        # Bkg: overlaps nothing
                [1, 1, 1, 1, 1, 2], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),  # the class-2 box at (150, 150) is missed
        2: _det([[10, 10, 60, 60], [121, 21, 169, 69]], [2, 1], [0.95, 0.85]),  # a TP and one inside the ignore
        3: _det([[5, 5, 25, 25]], [2], [0.3]),
    }
    return records, detections


def random_case(seed, images=25, classes=3):
    rng = np.random.default_rng(seed)
    records, detections = [], {}
    for i in range(1, images + 1):
        n = int(rng.integers(0, 5))
        xy, wh = rng.uniform(0, 80, (n, 2)), rng.uniform(8, 50, (n, 2))
        boxes, labels = np.concatenate([xy, xy + wh], 1), rng.integers(1, classes + 1, n)
        records.append(_gt(i, boxes, labels, rng.random(n) < 0.1))
        found, found_labels, scores = [], [], []
        for box, label in zip(boxes, labels, strict=True):
            if rng.random() < 0.2:
                continue  # missed
            found.append(box + rng.normal(0, rng.choice([1, 6, 15]), 4))
            found_labels.append(label if rng.random() < 0.8 else rng.integers(1, classes + 1))
            if rng.random() < 0.2:  # a duplicate
                found.append(box + rng.normal(0, 2, 4))
                found_labels.append(label)
        for _ in range(int(rng.integers(0, 3))):  # background
            xy, wh = rng.uniform(0, 150, 2), rng.uniform(5, 40, 2)
            found.append(np.concatenate([xy, xy + wh]))
            found_labels.append(rng.integers(1, classes + 1))
        scores = np.round(rng.random(len(found)), 2)  # ties included
        if found and rng.random() > 0.05:
            detections[i] = _det(found, found_labels, scores)
    return records, detections


def run_tidecv(tidecv, records, detections):
    gt, pred = tidecv.Data("gt"), tidecv.Data("pred")
    for rec in records:
        gt.add_image(rec.image_id, rec.name)
        for box, label, ignore in zip(rec.boxes, rec.labels, rec.ignore, strict=True):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            (gt.add_ignore_region if ignore else gt.add_ground_truth)(rec.image_id, int(label), xywh)
    for image_id, det in detections.items():
        for box, label, score in zip(det["boxes"], det["labels"], det["scores"], strict=True):
            pred.add_detection(image_id, int(label), float(score), [box[0], box[1], box[2] - box[0], box[3] - box[1]])
    evaluator = tidecv.TIDE()
    run = evaluator.evaluate(gt, pred, mode=tidecv.TIDE.BOX)
    return run, evaluator.get_main_errors()["pred"], evaluator.get_special_errors()["pred"]


def _per_class_tidecv(tidecv, run):
    """Per class, TIDE's AP after fixing each main error type: tidecv's own fix, read per class."""
    from tidecv.quantify import TIDE

    out = {}
    for error_type in TIDE._error_types:
        data = run.fix_errors(lambda e, t=error_type: isinstance(e, t))
        out[error_type.short_name] = {c: obj.get_ap() for c, obj in data.objs.items() if not obj.is_empty()}
    return out


@pytest.mark.parametrize("case", ["every_error", *[f"random{seed}" for seed in range(8)]])
def test_tide_equals_tidecv(tidecv, case):
    records, detections = every_error_case() if case == "every_error" else random_case(int(case[6:]))
    run, main, special = run_tidecv(tidecv, records, detections)
    ours = tide(detections, records, ["a", "b", "c"])
    assert ours["AP"] == pytest.approx(run.ap, abs=1e-9)
    for kind in MAIN_ERRORS:
        assert ours["main"][kind] == pytest.approx(main[kind], abs=1e-9), kind
    for kind in ("FalsePos", "FalseNeg"):
        assert ours["special"][kind] == pytest.approx(special[kind], abs=1e-9), kind
    assert ours["counts"] == {kind: len(run.error_dict[t]) for t in run.error_dict for kind in [t.short_name]}
    theirs = _per_class_tidecv(tidecv, run)
    base = {c: obj.get_ap() for c, obj in run.ap_data.objs.items() if not obj.is_empty()}
    for c, ap in base.items():
        name = ["a", "b", "c"][c - 1]
        assert ours["per_class"][name]["AP"] == pytest.approx(ap, abs=1e-9)
        for kind in MAIN_ERRORS:
            expected = max(theirs[kind].get(c, 0.0) - ap, 0.0)
            assert ours["per_class"][name]["main"][kind] == pytest.approx(expected, abs=1e-9), (name, kind)


def test_every_error_type_is_found_where_it_was_made():
    records, detections = every_error_case()
    run = TideRun(detections, records)
    kinds = {(e.image_id, e.kind, e.index) for e in run.errors}
    # image 1, detections best first: 0 TP, 1 Dupe, 2 Loc, 3 Cls, 4 Both, 5 Bkg; its box 3 is missed
    # image 2's second detection lies in an ignored region: TIDE still names it (Bkg) but it is no false positive
    assert kinds == {(1, "Dupe", 1), (1, "Loc", 2), (1, "Cls", 3), (1, "Both", 4), (1, "Bkg", 5), (1, "Miss", 3),
                     (2, "Bkg", 1), (3, "Bkg", 0)}
    assert next(e for e in run.errors if e.image_id == 2).original is None


def test_tide_with_a_max_dets_cut_and_many_ties_equals_tidecv(tidecv):
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 100, (150, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(5, 40, (150, 2))], 1)
    records = [_gt(1, boxes[:20], rng.integers(1, 3, 20))]
    detections = {1: _det(boxes, rng.integers(1, 3, 150), np.round(rng.random(150), 1))}  # 150 > 100 kept
    run, main, _ = run_tidecv(tidecv, records, detections)
    ours = tide(detections, records, ["a", "b"])
    assert ours["AP"] == pytest.approx(run.ap, abs=1e-9)
    assert all(ours["main"][k] == pytest.approx(main[k], abs=1e-9) for k in MAIN_ERRORS)


# ----- confusion matrix and thresholds by hand ---------------------------------------------------------------
def test_confusion_matrix_by_hand():
    records = [_gt(1, [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [1, 2, 2]),
               _gt(2, [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], ignore=[False, True])]
    detections = {1: _det([[0, 0, 10, 10], [20, 0, 30, 10], [21, 0, 31, 10], [70, 70, 80, 80], [40, 0, 50, 10]],
                          [1, 1, 2, 2, 2], [0.9, 0.8, 0.7, 0.6, 0.3]),
                  2: _det([[50, 50, 60, 60], [0, 0, 10, 9]], [1, 2], [0.9, 0.9])}
    matrix = confusion_matrix(detections, records, num_classes=2, conf_thresh=0.5)
    # image 1: 0.9 takes box 0 (1 -> 1); 0.8 takes box 1 whatever its class (2 -> 1); 0.7 finds box 1 taken and
    # box 2 too far (background -> 2); 0.6 overlaps nothing (background -> 2); 0.3 is below the threshold, so
    # box 2 is never taken (2 -> background). Image 2: the ignored box covers 0.9's detection (left out); the
    # class-2 detection takes the class-1 box (1 -> 2).
    assert matrix.tolist() == [[1, 1, 0],
                               [1, 0, 1],
                               [0, 2, 0]]


def test_best_f1_threshold_by_hand():
    # class 1: 3 boxes; detections by score: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP
    records = [_gt(1, [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [1, 1, 1])]
    detections = {1: _det([[0, 0, 10, 10], [60, 60, 70, 70], [20, 0, 30, 10], [80, 0, 90, 10], [40, 0, 50, 10]],
                          [1] * 5, [0.9, 0.8, 0.7, 0.6, 0.5])}
    best, curves = best_f1_thresholds(detections, records, ["a", "b"])
    # keep >= 0.9: P 1, R 1/3, F1 0.5; >= 0.8: 1/2, 1/3, 0.4; >= 0.7: 2/3, 2/3, 2/3; >= 0.6: 1/2, 2/3, 0.571;
    # >= 0.5: 3/5, 1, 0.75 -> the best
    assert best["a"] == pytest.approx({"threshold": 0.5, "precision": 0.6, "recall": 1.0, "f1": 0.75})
    assert best["b"] is None  # no boxes, no detections
    assert curves["a"]["f1"] == pytest.approx([0.5, 0.4, 2 / 3, 4 / 7, 0.75])


def test_a_threshold_sits_at_the_end_of_a_run_of_equal_scores():
    curve = threshold_curve(np.array([0.9, 0.5, 0.5, 0.2]), np.array([True, True, False, False]), num_gt=2)
    assert curve["threshold"].tolist() == [0.9, 0.5, 0.2]
    assert curve["precision"].tolist() == pytest.approx([1.0, 2 / 3, 0.5])


# ----- the files and the edge inputs ---------------------------------------------------------------------------
def test_analyze_writes_its_files_and_draws_the_worst_cases(tmp_path):
    records, detections = every_error_case()
    result = analyze(detections, records, ["cat", "dog"], tmp_path,
                     load_image=lambda rec: np.full((200, 200, 3), 128, np.uint8))
    for name in ("analysis.json", "analysis.md", "tide.png", "confusion.png", "confusion_normalized.png",
                 "thresholds.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    drawn = sorted(p.name.split("_")[0] for p in (tmp_path / "analysis").iterdir())
    assert drawn == ["Bkg", "Bkg", "Both", "Cls", "Dupe", "Loc", "Miss"]
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["confusion"]["classes"] == ["cat", "dog", "background"]
    assert set(saved["tide"]["main"]) == set(MAIN_ERRORS) and saved == json.loads(json.dumps(result))


def test_empty_results_foreign_images_and_a_class_without_boxes_are_said_not_crashed_on(tmp_path):
    records = [_gt(1, [[0, 0, 10, 10]], [1])]
    result = analyze({}, records, ["cat", "dog"], tmp_path / "empty")
    assert result["tide"]["AP"] == 0.0 and result["tide"]["counts"]["Miss"] == 1
    assert any("no detections" in n for n in result["notes"]) and any("dog has no ground truth" in n
                                                                          for n in result["notes"])
    result = analyze({7: _det([[0, 0, 5, 5]], [1], [0.9]), 1: _det([[0, 0, 10, 10]], [1], [0.9])}, records,
                     ["cat", "dog"], tmp_path / "foreign")
    assert result["tide"]["AP"] == pytest.approx(100.0)
    assert any("1 detections on 1 images that are not in the annotations" in n for n in result["notes"])
    assert result["thresholds"]["dog"] is None and result["thresholds"]["cat"]["f1"] == 1.0


def test_predictor_best_keeps_each_class_above_its_stored_threshold(tmp_path):
    import torch

    from detection.build import build_detector, detector_checkpoint
    from detection.predictor import Predictor
    from engine.errors import UserError
    from tests.test_detection_model import small_cfg

    cfg = small_cfg()
    cfg["model"]["roi"]["score_thresh"] = 0.0
    model = build_detector(cfg, num_classes=2).eval()
    torch.save(detector_checkpoint(model, cfg, ["a", "b"], score_thresholds={"a": 0.6, "b": None}),
               tmp_path / "det.pth")
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    everything = Predictor(tmp_path / "det.pth", device="cpu")(image)
    best = Predictor(tmp_path / "det.pth", device="cpu", score_thresh="best")(image)
    expected = (everything["labels"] == 2) | (everything["scores"] >= 0.6)
    assert expected.sum() < len(expected)  # the threshold removes some
    np.testing.assert_array_equal(best["scores"], everything["scores"][expected])
    torch.save(detector_checkpoint(model, cfg, ["a", "b"]), tmp_path / "plain.pth")
    with pytest.raises(UserError, match="plain.pth: holds no best score thresholds"):
        Predictor(tmp_path / "plain.pth", device="cpu", score_thresh="best")


def test_a_score_threshold_below_the_models_lowers_it(tmp_path):
    import torch

    from detection.build import build_detector, detector_checkpoint
    from detection.predictor import Predictor
    from tests.test_detection_model import small_cfg

    cfg = small_cfg()
    cfg["model"]["roi"].update(score_thresh=0.335, detections_per_image=1000)  # the model's own threshold
    model = build_detector(cfg, num_classes=2).eval()
    torch.save(detector_checkpoint(model, cfg, ["a", "b"]), tmp_path / "det.pth")
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    own = Predictor(tmp_path / "det.pth", device="cpu")(image)
    lower = Predictor(tmp_path / "det.pth", device="cpu", score_thresh=0.0)(image)
    assert len(own["scores"]) and (own["scores"] >= 0.335).all() and (lower["scores"] < 0.335).any()
    np.testing.assert_array_equal(lower["scores"][lower["scores"] >= 0.335], own["scores"])


def test_eval_det_analyze_on_a_results_file_whose_images_are_not_there(tmp_path, capsys):
    from engine.cli import run_cli
    from tools import eval_det

    records, detections = every_error_case()
    gt = {"images": [{"id": r.image_id, "file_name": r.name, "width": 200, "height": 200} for r in records],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [{"id": k, "image_id": r.image_id, "category_id": int(c), "iscrowd": int(i),
                           "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float((b[2] - b[0]) * (b[3] - b[1]))}
                          for k, (r, b, c, i) in enumerate(((r, b, c, i) for r in records
                                                            for b, c, i in zip(r.boxes, r.labels, r.ignore,
                                                                               strict=True)), start=1)]}
    results = [{"image_id": i, "category_id": int(c), "score": float(s), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for i, d in detections.items() for b, c, s in zip(d["boxes"], d["labels"], d["scores"], strict=True)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(results))
    code = run_cli(eval_det.main, ["--annotations", str(tmp_path / "gt.json"), "--results", str(tmp_path / "dets.json"),
                                   "--analyze", "--output", str(tmp_path / "out")])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert saved["tide"]["counts"]["Cls"] == 1 and any("not drawn" in n for n in saved["notes"])
    assert run_cli(eval_det.main, ["--annotations", str(tmp_path / "gt.json"), "--results",
                                   str(tmp_path / "dets.json"), "--analyze"]) == 2
    assert "--analyze writes its files to --output" in capsys.readouterr().err
