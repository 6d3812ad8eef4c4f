"""A user's own data and models: COCO json and VOC-layout folders by path, fine-tuning, model_best.pth, run
folders that are never overwritten or mixed, logs, EXIF orientation, and prediction on files, folders, globs,
videos and through the Python API."""

import contextlib
import io
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import backbones
from detection.build import build_detector, load_detector
from detection.data.catalog import build_detection_dataset
from detection.data.coco import coco_from_dict, read_coco_json
from detection.data.shapes import make_shapes
from detection.data.voc import VOCDetection
from detection.evaluation.coco import coco_evaluate
from detection.predictor import Predictor
from engine.cli import run_cli
from engine.errors import UserError
from engine.images import image_size, load_rgb
from tests.helpers import DEMO_CONFIG, TINY_DETECTOR, voc_xml
from tools import eval_cls, eval_det, predict, train_cls, train_det

EXIF_ROTATE_90_CW = 6  # displayed = stored turned 90 degrees clockwise


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, num_train=8, num_val=4, seed=2, min_side=96, max_side=128)
    return out


@pytest.fixture(scope="module")
def own_coco(shapes, tmp_path_factory):
    """The shapes set as a user's export: `train.json` and `val.json` in other folders, without the keys real
    files often lack (iscrowd, area, info, licenses, annotation ids)."""
    root = tmp_path_factory.mktemp("own_coco")
    for split, name in (("train", "train.json"), ("val", "val.json")):
        data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        for ann in data["annotations"]:
            for key in ("iscrowd", "area", "id"):
                ann.pop(key)
        (root / split).mkdir()
        (root / split / name).write_text(json.dumps(data))
        shutil.copytree(shapes / split, root / f"{split}_images")
    return root


def shapes_as_voc(shapes, out, extra_object=None):
    """The shapes set written as a VOC-layout folder (JPEG images, 1-based inclusive XML boxes), train/val lists."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        ids = []
        for img in data["images"]:
            stem = f"{split}_{img['id']:03d}"
            objects = [(names[a["category_id"]], (a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][0] + a["bbox"][2],
                                                  a["bbox"][1] + a["bbox"][3]), False)
                       for a in data["annotations"] if a["image_id"] == img["id"]]
            if extra_object and not ids:
                objects.append(extra_object)
            (out / "Annotations" / f"{stem}.xml").write_text(voc_xml(objects, img["width"], img["height"]))
            Image.open(shapes / split / img["file_name"]).convert("RGB").save(out / "JPEGImages" / f"{stem}.jpg")
            ids.append(stem)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return out


def train(out, *args, weights=None, iters=2):
    argv = ["--config", DEMO_CONFIG, "--output", str(out), "--backbone", "resnet18", "--max-iter", str(iters),
            "--no-progress", *TINY_DETECTOR, *args]
    return run_cli(train_det.main, argv + (["--weights", str(weights)] if weights else []))


# ----- datasets by path ------------------------------------------------------------------------------------------
def test_a_coco_json_of_any_name_without_iscrowd_or_area_trains_and_evaluates(own_coco, tmp_path, capsys):
    out = tmp_path / "run"
    code = train(out, "--dataset", "coco", "--train-ann", str(own_coco / "train" / "train.json"), "--train-images",
                 str(own_coco / "train_images"), "--val-ann", str(own_coco / "val" / "val.json"), "--val-images",
                 str(own_coco / "val_images"))
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["coco"]) >= {"AP", "AP50", "per_class"} and (out / "model_final.pth").is_file()
    assert torch.load(out / "model_final.pth", weights_only=True)["category_ids"] == [1, 2, 3]
    filled = read_coco_json(own_coco / "val" / "val.json")
    assert all({"iscrowd", "area", "id", "segmentation"} <= a.keys() for a in filled["annotations"])
    assert {"info", "licenses"} <= filled.keys()


def test_filled_coco_file_gives_pycocotools_numbers_of_the_complete_file(shapes, own_coco):
    complete = shapes / "annotations" / "instances_val.json"
    rng = np.random.default_rng(0)
    data = json.loads(complete.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.uniform(0.1, 1)),
                "bbox": [v + float(rng.normal(0, 2)) for v in a["bbox"]]} for a in data["annotations"]]
    ours = coco_evaluate(coco_from_dict(read_coco_json(own_coco / "val" / "val.json")), results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(complete))
        evaluator = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert ours["AP"] == pytest.approx(100 * evaluator.stats[0], abs=1e-12)
    assert ours["AP50"] == pytest.approx(100 * evaluator.stats[1], abs=1e-12)


def test_coco_entries_pycocotools_would_trip_on_are_named_up_front(tmp_path):
    base = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 8}],
            "categories": [{"id": 1, "name": "a"}]}
    cases = [({"images": [{"id": "one", "file_name": "a.png", "width": 10, "height": 8}]}, "images id 'one'"),
             ({"images": base["images"] * 2}, "images id 1 appears 2 times"),
             ({"annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, "w", 2]}]},
              r"annotations\[0\] has bbox"),
             ({"annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 3}]}, "iscrowd 3")]
    for i, (change, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps({**base, **change}))
        with pytest.raises(UserError, match=f"bad{i}.json: .*{message}"):
            read_coco_json(path)
    # width and height left out: read from the image itself
    Image.new("RGB", (10, 8)).save(tmp_path / "a.png")
    path = tmp_path / "no_size.json"
    path.write_text(json.dumps({**base, "images": [{"id": 1, "file_name": "a.png"}]}))
    assert read_coco_json(path, tmp_path)["images"][0] | {} == {"id": 1, "file_name": "a.png", "width": 10,
                                                                 "height": 8}


def test_voc_layout_folder_with_its_own_classes(shapes, tmp_path, capsys):
    root = shapes_as_voc(shapes, tmp_path / "mine")
    data = {"dataset": "voc", "root": str(root), "classes": ["triangle", "ellipse", "rectangle"],
            "train_split": "train"}
    ds = build_detection_dataset(data, train=True)
    coco = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    first = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    rec = ds.records[0]
    assert ds.class_names == ["triangle", "ellipse", "rectangle"] and len(ds) == 8
    assert rec.boxes.tolist() == [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in first]
    by_name = {"ellipse": 2, "rectangle": 3, "triangle": 1}
    assert rec.labels.tolist() == [by_name[coco["categories"][a["category_id"] - 1]["name"]] for a in first]
    # without --classes: the names its annotations use, sorted
    assert build_detection_dataset({**data, "classes": None}, train=True).class_names == ["ellipse", "rectangle",
                                                                                          "triangle"]
    out = tmp_path / "run"
    assert train(out, "--dataset", "voc", "--data", str(root), "--classes", "ellipse,rectangle,triangle",
                 "--train-split", "train", "--val-split", "val", "test.metrics=null") == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"voc12", "coco"}  # the default metrics of a VOC-layout folder of one's own
    # a list file anywhere instead of a name in ImageSets/Main
    listing = tmp_path / "some.txt"
    listing.write_text("train_001.jpg\ntrain_002.jpg\ntrain_001.jpg\n")
    assert len(build_detection_dataset({**data, "train_split": str(listing)}, train=True)) == 2


def test_an_unknown_class_is_named_with_the_classes_found_or_skipped_and_counted(shapes, tmp_path, capsys):
    root = shapes_as_voc(shapes, tmp_path / "mine", extra_object=("unicorn", (2, 2, 20, 20), False))
    code = run_cli(train_det.main, ["--dataset", "voc", "--data", str(root), "--classes", "ellipse,rectangle,triangle",
                                    "--train-split", "train", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train_001.xml: object of class 'unicorn'" in err[0] and "'unicorn' (1)" in err[0]
    assert "'ellipse'" in err[0] and "--ignore-unknown-classes" in err[0]
    with pytest.warns(UserWarning, match="skipped 1 objects of classes not among the 3 given: unicorn"):
        ds = VOCDetection(root, "voc", "train", class_names=["ellipse", "rectangle", "triangle"],
                          ignore_unknown_classes=True)
    assert ds.skipped_objects == {"unicorn": 1}


def test_real_raccoon_photos_as_a_voc_folder(shared_data, tmp_path):
    """The raccoon set as published: `annotations/` and `images/`, no ImageSets; its CSV gives the split."""
    raccoon = shared_data / "raccoon"
    rows = [line.split(",") for line in (raccoon / "data" / "test_labels.csv").read_text().splitlines()[1:]]
    listing = tmp_path / "test.txt"
    listing.write_text("\n".join(row[0] for row in rows))
    ds = build_detection_dataset({"dataset": "voc", "root": str(raccoon), "classes": "raccoon",
                                  "val_split": str(listing)}, train=False)
    assert len(ds) == len({row[0] for row in rows}) == 40 and ds.class_names == ["raccoon"]
    boxes = sorted([float(v) - (1 if i < 2 else 0) for i, v in enumerate(row[4:8])] for row in rows)
    assert sorted(b for r in ds.records for b in r.boxes.tolist()) == boxes  # the CSV's boxes, VOC's -1 applied
    image, target = ds[0]
    rec = ds.records[0]
    assert image.shape[1:] == (rec.height, rec.width) and target["boxes"].shape == (len(rec.labels), 4)


# ----- EXIF orientation ----------------------------------------------------------------------------------------
def exif_rotated_jpeg(path, displayed: np.ndarray) -> None:
    """Store `displayed` (H, W, 3) turned back 90 degrees with EXIF orientation 6, as phones do."""
    stored = Image.fromarray(np.rot90(displayed, k=1).copy())  # counter-clockwise: orientation 6 undoes it
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90_CW
    stored.save(path, exif=exif.tobytes(), quality=98)


def test_images_are_read_as_displayed(tmp_path):
    displayed = np.zeros((40, 60, 3), np.uint8)
    displayed[:10, :20] = 255  # a white block at the top left as the viewer sees it
    exif_rotated_jpeg(tmp_path / "phone.jpg", displayed)
    raw = Image.open(tmp_path / "phone.jpg")
    assert raw.size == (40, 60)  # stored sideways
    reference = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    ours = np.asarray(load_rgb(tmp_path / "phone.jpg"))
    assert ours.shape == (40, 60, 3) and np.array_equal(ours, reference)
    assert ours[:10, :20].mean() > 200 and ours[30:, 40:].mean() < 50
    assert image_size(tmp_path / "phone.jpg") == (60, 40)


# ----- fine-tuning, model_best, run folders ---------------------------------------------------------------------
def test_fine_tuning_a_detector_on_other_classes_keeps_all_but_its_class_layer(shapes, tmp_path, capsys):
    source = tmp_path / "shapes_run"
    assert train(source, "--data", str(shapes)) == 0  # 3 classes
    capsys.readouterr()
    root = shapes_as_voc(shapes, tmp_path / "one_class")
    out = tmp_path / "finetuned"
    assert train(out, "--dataset", "voc", "--data", str(root), "--classes", "ellipse", "--ignore-unknown-classes",
                 "--train-split", "train", "--val-split", "val", weights=source / "model_final.pth", iters=1) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "re-initialised" in line or "new init" in line]
    assert len(lines) == 1 and "trained for 3 classes, fine-tuned here for 1" in lines[0]
    # the starting point, built as train_det builds it: everything but the predictor is the source's
    src = torch.load(source / "model_final.pth", weights_only=True)
    cfg = torch.load(out / "model_final.pth", weights_only=True)["config"]
    cfg["model"]["weights"] = str(source / "model_final.pth")
    start = build_detector(cfg, 1).state_dict()
    for key, value in src["state_dict"].items():
        if key not in start:  # the source trained from scratch (BN); its first stages are frozen BN here
            assert key.endswith(".num_batches_tracked") and key.startswith(("backbone.stages.stem.",
                                                                             "backbone.stages.res2."))
        elif key.startswith("roi_heads.predictor."):
            assert start[key].shape != value.shape
        else:
            assert torch.equal(start[key], value), key
    # another backbone or input convention is an error that names the keys
    code = train(tmp_path / "other", "--data", str(shapes), "model.backbone_options.width=16",
                 weights=source / "model_final.pth")
    assert code == 2 and "model.backbone_options" in capsys.readouterr().err


def test_model_best_is_the_best_periodic_evaluation(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--data", str(shapes), "--eval-period", "2", "solver.lr=0.02", iters=6) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [(r["voc07_mAP"], -r["iter"]) for r in records if r["split"] == "val"]
    best_value, best_iter = max(evaluations)
    best = json.loads((out / "metrics.json").read_text())["best"]
    assert best == {"metric": "voc07_mAP", "value": best_value, "iteration": -best_iter,
                    "checkpoint": "model_best.pth"}
    capsys.readouterr()
    assert run_cli(eval_det.main, ["--checkpoint", str(out / "model_best.pth"), "--dataset", "shapes", "--data",
                                   str(shapes), "--workers", "0", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["voc07"]["mAP"] == pytest.approx(best_value, abs=1e-9)


def test_a_used_run_folder_is_refused_untouched_and_resume_needs_only_the_folder(shapes, tmp_path, capsys):
    once = tmp_path / "once"
    assert train(once, "--data", str(shapes), "train.checkpoint_period=2", iters=4) == 0
    out = tmp_path / "run"
    assert train(out, "--data", str(shapes), "train.checkpoint_period=2", iters=2) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train(out, "--data", str(shapes)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    (out / ".checkpoint_0000003.pth.abc123.tmp").write_bytes(b"half a checkpoint")  # a save killed mid-write
    assert run_cli(train_det.main, ["--output", str(out), "--resume", "--max-iter", "4", "--no-progress"]) == 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    a = torch.load(once / "model_final.pth", weights_only=True)["state_dict"]
    b = torch.load(out / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in out.glob("checkpoint_*.pth")) == ["checkpoint_0000002.pth", "checkpoint_0000004.pth"]
    assert (out / "last_checkpoint").read_text() == "checkpoint_0000004.pth"
    # a flag given again with another value names the key and both values
    capsys.readouterr()
    assert run_cli(train_det.main, ["--output", str(out), "--resume", "--lr", "0.5"]) == 2
    saved_lr = torch.load(out / "model_final.pth", weights_only=True)["config"]["solver"]["lr"]  # the run's own
    assert saved_lr != 0.5 and f"solver.lr={saved_lr}" in capsys.readouterr().err
    # resuming from an earlier checkpoint abandons the later one: it never lingers as a newer "last" one
    assert run_cli(train_det.main, ["--output", str(out), "--resume", str(out / "checkpoint_0000002.pth"),
                                    "--max-iter", "3", "train.checkpoint_period=1", "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint_*.pth")) == ["checkpoint_0000002.pth", "checkpoint_0000003.pth"]
    assert (out / "last_checkpoint").read_text() == "checkpoint_0000003.pth"


def test_log_file_and_plain_progress_lines(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--data", str(shapes), "train.log_period=1", iters=2) == 0
    stdout = capsys.readouterr().out
    for text in (stdout, (out / "log.txt").read_text()):
        line = next(x for x in text.splitlines() if "iter 2/2" in x)
        for part in ("loss ", "loss_cls ", "loss_rpn_cls ", "lr ", "s/iter", "eta "):
            assert part in line, part


def test_classifier_checkpoint_reproduces_its_error_with_no_flags(tmp_path, capsys):
    out = tmp_path / "cls"
    assert run_cli(train_cls.main, ["--output", str(out), "--arch", "cifar_resnet20", "--max-iter", "3",
                                    "--batch-size", "16", "--no-progress", "--workers", "0", "model.options.width=4",
                                    "data.synthetic.train_size=32", "data.synthetic.val_size=24"]) == 0
    reported = json.loads((out / "metrics.json").read_text())
    assert torch.load(out / "model_final.pth", weights_only=True)["class_names"] == [f"class_{i}" for i in range(10)]
    assert run_cli(eval_cls.main, ["--checkpoint", str(out / "model_final.pth"), "--json",
                                   str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    assert (again["error"], again["top5_error"], again["count"]) == (reported["error"], reported["top5_error"], 24)


# ----- prediction ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "run"
    assert train(out, "--data", str(shapes), "model.roi.score_thresh=0.0") == 0
    return out / "model_final.pth"


def test_predictor_takes_a_path_a_pil_image_or_an_array(detector, shapes):
    predictor = Predictor(detector, device="cpu")
    path = shapes / "val" / "000001.png"
    from_path = predictor(path)
    from_pil = predictor(Image.open(path))
    from_array = predictor(np.asarray(Image.open(path).convert("RGB")))
    assert len(from_path["boxes"]) > 0 and set(from_path) == {"boxes", "scores", "labels", "names"}
    for other in (from_pil, from_array):
        assert all(np.array_equal(from_path[k], other[k]) for k in ("boxes", "scores", "labels"))
    assert from_path["names"] == [["ellipse", "rectangle", "triangle"][i - 1] for i in from_path["labels"]]
    # the same as the model called by hand on the tensor (up to float rounding: the predictor runs it with BN folded)
    model, _, _ = load_detector(detector)
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        direct = model.eval()([image])[0]
    assert np.allclose(from_path["boxes"], direct["boxes"].numpy(), rtol=0, atol=1e-3)
    assert np.array_equal(from_path["labels"], direct["labels"].numpy())
    with pytest.raises(UserError, match="must be \\(H, W, 3\\) uint8"):
        predictor(np.zeros((4, 4), np.float32))


def test_an_exif_rotated_photo_is_predicted_as_displayed(detector, shapes, tmp_path):
    displayed = np.asarray(Image.open(shapes / "val" / "000002.png").convert("RGB"))
    exif_rotated_jpeg(tmp_path / "phone.jpg", displayed)
    Image.fromarray(displayed).save(tmp_path / "upright.jpg", quality=98)
    predictor = Predictor(detector, device="cpu")
    rotated, upright = predictor(tmp_path / "phone.jpg"), predictor(tmp_path / "upright.jpg")
    h, w = displayed.shape[:2]
    assert len(rotated["boxes"]) and (rotated["boxes"][:, 2] <= w).all() and (rotated["boxes"][:, 3] <= h).all()
    # both JPEGs hold the same picture up to compression: the detections agree closely
    assert len(rotated["boxes"]) == len(upright["boxes"])
    assert np.abs(rotated["boxes"][0] - upright["boxes"][0]).max() < 4


def test_predict_tool_on_a_folder_a_glob_and_a_video(detector, shapes, tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(shapes / "val" / "000001.png", photos / "a.png")
    Image.open(shapes / "val" / "000002.png").convert("RGB").save(photos / "a.jpg")
    shutil.copy(shapes / "val" / "000003.png", photos / "sub" / "b.png")
    out = tmp_path / "pred"
    # one image a batch, as the Predictor runs: a batch pads its images to one size, which moves the detections
    # near the padded border a little (BN shifts the padding's zeros)
    assert run_cli(predict.main, ["--checkpoint", str(detector), "--input", str(photos), "--output", str(out),
                                  "--score-thresh", "0", "--batch-size", "1", "--no-progress"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*") if p.suffix != ".json") == [
        "a.jpg", "a.png", "sub/b.png"]
    assert Image.open(out / "a.jpg").format == "JPEG" and Image.open(out / "a.png").format == "PNG"
    results = json.loads((out / "results.json").read_text())
    assert {r["file_name"] for r in results} == {"a.jpg", "a.png", "sub/b.png"}
    assert all(r["category_id"] in (1, 2, 3) and len(r["bbox"]) == 4 for r in results)
    # the results file's boxes are the Predictor's, as COCO [x, y, width, height]
    first = Predictor(detector, device="cpu", score_thresh=0.0)(photos / "a.jpg")
    mine = [r for r in results if r["file_name"] == "a.jpg"]
    x1, y1, x2, y2 = first["boxes"][0]
    assert mine[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
    assert run_cli(predict.main, ["--checkpoint", str(detector), "--input", str(photos / "*.png"), "--output",
                                  str(tmp_path / "glob"), "--no-progress"]) == 0
    assert [p.name for p in (tmp_path / "glob").glob("*.png")] == ["a.png"]
    assert run_cli(predict.main, ["--checkpoint", str(detector), "--input", str(photos), "--output",
                                  str(photos)]) == 2  # would overwrite the inputs
    assert "would overwrite the input" in capsys.readouterr().err
    # a short video: the annotated video and one JSON line per frame
    frame = cv2.imread(str(shapes / "val" / "000001.png"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for _ in range(4):
        writer.write(frame)
    writer.release()
    assert run_cli(predict.main, ["--checkpoint", str(detector), "--input", str(video), "--output",
                                  str(tmp_path / "vid"), "--batch-size", "3", "--no-progress"]) == 0
    lines = (tmp_path / "vid" / "clip.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2, 3]
    capture = cv2.VideoCapture(str(tmp_path / "vid" / "clip.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    capture.release()


def test_coco_per_class_ap_and_null_where_there_is_nothing_to_measure(detector, shapes, tmp_path, capsys):
    """Shapes have no object larger than 96x96: pycocotools reports APl as -1; the JSON says null."""
    assert run_cli(eval_det.main, ["--checkpoint", str(detector), "--dataset", "shapes", "--data", str(shapes),
                                   "--metric", "coco", "--workers", "0", "--json", str(tmp_path / "m.json")]) == 0
    body = json.loads((tmp_path / "m.json").read_text())
    assert body["APl"] is None and body["ARl"] is None and set(body["per_class"]) == {"ellipse", "rectangle",
                                                                                       "triangle"}
    printed = capsys.readouterr().out
    assert "APl n/a" in printed and "| ellipse |" in printed


def test_backbone_weights_still_start_a_detector(tmp_path, shapes):
    classifier = backbones.build_model("resnet18", width=8)
    path = tmp_path / "r18.pth"
    torch.save({"arch": "resnet18", "options": {"width": 8}, "state_dict": classifier.state_dict()}, path)
    assert train(tmp_path / "run", "--data", str(shapes), weights=path, iters=1) == 0
