"""What labelling tools export, read as it is: YOLO (ultralytics layout), LabelMe, COCO from Roboflow / CVAT /
Label Studio; the same boxes in every layout evaluate alike; conversion between layouts; a look at the data."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detection.data.browse import anchor_shapes, best_anchor_iou, dataset_statistics
from detection.data.catalog import build_detection_dataset
from detection.data.coco import CocoDetection
from detection.data.labelme import LabelMeDetection
from detection.data.yolo import YOLODetection, label_path
from detection.inference import score
from detection.train import DEFAULTS
from engine.cli import run_cli
from engine.errors import UserError
from tests.helpers import voc_xml
from tools import browse_data, convert_data, train_det

# three images (width, height) and their boxes (class name, xyxy pixels)
IMAGES = {"a": (80, 60, [("cat", [10, 5, 50, 45]), ("dog", [40, 20, 78, 58])]),
          "b": (64, 64, [("dog", [0, 0, 32, 20])]),
          "c": (50, 70, [])}
CLASSES = ["cat", "dog"]


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        path)


def make_yolo(root: Path, names=CLASSES, list_file: bool = False) -> Path:
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["a", "b"])):
        for stem in stems:
            width, height, objects = IMAGES[stem]
            _image(root / "images" / split / f"{stem}.jpg", width, height)
            if not objects and stem == "c":
                continue  # no label file: an image without objects
            lines = [f"{CLASSES.index(n)} {(b[0] + b[2]) / 2 / width} {(b[1] + b[3]) / 2 / height} "
                     f"{(b[2] - b[0]) / width} {(b[3] - b[1]) / height}" for n, b in objects]
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    val = "images/val"
    if list_file:
        (root / "val.txt").write_text("./images/val/a.jpg\n./images/val/b.jpg\n")
        val = "val.txt"
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": ["images/train"], "val": val,
                                                     "names": names}))
    return root / "data.yaml"


def make_voc(root: Path, stems=("a", "b")) -> Path:
    for stem in stems:
        width, height, objects = IMAGES[stem]
        _image(root / "JPEGImages" / f"{stem}.jpg", width, height)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        # the devkit's 1-based pixel convention: xmin + 1, ymin + 1
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(
            [(n, [b[0] + 1, b[1] + 1, b[2], b[3]], False) for n, b in objects], width, height, f"{stem}.jpg"))
    (root / "val.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


@pytest.mark.parametrize("names,list_file", [(CLASSES, False), ({0: "cat", 1: "dog"}, True)])
def test_yolo_dataset_names_as_list_or_mapping_folders_or_list_files(tmp_path, names, list_file):
    data = make_yolo(tmp_path / "yolo", names, list_file)
    train = YOLODetection(data, "train", train=True)
    assert train.class_names == CLASSES and len(train) == 3
    by_name = {Path(r.name).stem: r for r in train.records}
    np.testing.assert_allclose(by_name["a"].boxes, [[10, 5, 50, 45], [40, 20, 78, 58]], atol=1e-9)
    assert by_name["a"].labels.tolist() == [1, 2] and len(by_name["c"].boxes) == 0  # no label file: no objects
    assert len(YOLODetection(data, "val")) == 2
    assert label_path(Path("/d/images/train/x.y.jpg")) == Path("/d/labels/train/x.y.txt")
    assert label_path(Path("/d/images/a/images/b.png")) == Path("/d/images/a/labels/b.txt")  # the last /images/


def test_yolo_polygons_become_their_bounding_box_and_bad_lines_are_named(tmp_path):
    data = make_yolo(tmp_path / "yolo")
    labels = tmp_path / "yolo" / "labels" / "train" / "b.txt"
    labels.write_text("1 0.0 0.0 0.5 0.0 0.5 0.3125 0.25 0.1\n")  # a polygon of the dog box (x 0..32, y 0..20)
    rec = next(r for r in YOLODetection(data, "train").records if r.name.endswith("b.jpg"))
    np.testing.assert_allclose(rec.boxes, [[0, 0, 32, 20]], atol=1e-9)
    for line, problem in (("1 0.5 0.5 0.2", "expected 'class cx cy w h' or a polygon"),
                          ("dog 0.5 0.5 0.2 0.2", "expected 'class cx cy w h'"),
                          ("1 0.5 1.5 0.2 0.2", "coordinates must be normalised to 0..1"),
                          ("5 0.5 0.5 0.2 0.2", "class id 5 is not among the 2 names")):
        labels.write_text(f"1 0.5 0.5 0.2 0.2\n{line}\n")
        with pytest.raises(UserError, match=rf"b.txt:2: .*{problem}"):
            YOLODetection(data, "train")
    with pytest.warns(UserWarning, match="skipped 1 objects of class ids not among the 2 names: id 5"):
        rec = next(r for r in YOLODetection(data, "train", ignore_unknown_classes=True).records
                   if r.name.endswith("b.jpg"))
    assert len(rec.boxes) == 1


def make_labelme(root: Path) -> Path:
    for stem, (width, height, objects) in IMAGES.items():
        _image(root / "pictures" / f"{stem}.png", width, height)
        shapes = []
        for k, (name, b) in enumerate(objects):
            if k == 0:  # a rectangle given by its corners in reverse order
                shapes.append({"label": name, "points": [[b[2], b[3]], [b[0], b[1]]], "shape_type": "rectangle"})
            else:  # a polygon touching the box's sides
                shapes.append({"label": name, "points": [[b[0], b[1]], [b[2], (b[1] + b[3]) / 2], [b[0], b[3]],
                                                         [(b[0] + b[2]) / 2, b[1]]], "shape_type": "polygon"})
        (root / f"{stem}.json").write_text(json.dumps({"shapes": shapes, "imagePath": f"pictures/{stem}.png",
                                                       "imageWidth": width, "imageHeight": height}))
    (root / "val.txt").write_text("a.json\nb\n")
    return root


def test_labelme_rectangles_polygons_circles_and_list_splits(tmp_path):
    root = make_labelme(tmp_path / "lm")
    every = LabelMeDetection(root)
    assert every.class_names == CLASSES and len(every) == 3
    np.testing.assert_allclose(every.records[0].boxes, [[10, 5, 50, 45], [40, 20, 78, 58]])
    assert len(LabelMeDetection(root, str(root / "val.txt"))) == 2
    circle = {"shapes": [{"label": "cat", "points": [[30, 30], [30, 40]], "shape_type": "circle"}],
              "imagePath": "pictures/a.png"}
    (root / "a.json").write_text(json.dumps(circle))
    np.testing.assert_allclose(LabelMeDetection(root).records[0].boxes, [[20, 20, 40, 40]])
    (root / "a.json").write_text(json.dumps({"shapes": [{"label": "bird", "points": [[1, 1], [5, 5]],
                                                         "shape_type": "rectangle"}], "imagePath": "pictures/a.png"}))
    with pytest.raises(UserError, match=r"a.json shape 0: label 'bird' is not one of the classes \(cat, dog\)"):
        LabelMeDetection(root, class_names=CLASSES)
    with pytest.warns(UserWarning, match=r"skipped 1 shapes of labels not among the 2 classes: bird \(1\)"):
        skipping = LabelMeDetection(root, class_names=CLASSES, ignore_unknown_classes=True)
    assert skipping.skipped_objects == {"bird": 1} and len(skipping.records[0].boxes) == 0


def test_coco_exports_of_labelling_tools_read_as_meant(tmp_path):
    _image(tmp_path / "a.jpg", 80, 60)
    roboflow = {"images": [{"id": 0, "file_name": "a.jpg", "width": 80, "height": 60}],
                "categories": [{"id": 0, "name": "animals", "supercategory": "none"},
                               {"id": 1, "name": "cat", "supercategory": "animals"},
                               {"id": 2, "name": "dog", "supercategory": "animals"}],
                "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [0, 0, 80, 60], "area": 0,
                                 "segmentation": [], "iscrowd": 0}]}  # area 0 and a box touching the border: CVAT
    (tmp_path / "_annotations.coco.json").write_text(json.dumps(roboflow))
    dataset = CocoDetection(tmp_path / "_annotations.coco.json", tmp_path)
    assert dataset.class_names == ["cat", "dog"]  # the unused parent is no class
    assert dataset.coco.anns[0]["area"] == 80 * 60
    roboflow["annotations"].append({"id": 1, "image_id": 0, "category_id": 9, "bbox": [1, 1, 5, 5]})
    (tmp_path / "_annotations.coco.json").write_text(json.dumps(roboflow))
    with pytest.raises(UserError, match=r"annotations\[1\] has unknown category_id 9"):
        CocoDetection(tmp_path / "_annotations.coco.json", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 annotations of unknown categories: id 9"):
        dataset = CocoDetection(tmp_path / "_annotations.coco.json", tmp_path, ignore_unknown_classes=True)
    assert len(dataset.records[0].boxes) == 1


def test_the_same_boxes_in_every_layout_evaluate_alike(tmp_path):
    voc = make_voc(tmp_path / "voc")
    base = {"dataset": "voc", "root": str(voc), "classes": CLASSES, "train_split": str(voc / "val.txt"),
            "val_split": str(voc / "val.txt")}
    layouts = {}
    for layout in ("coco", "yolo", "labelme"):
        out = tmp_path / layout
        assert run_cli(convert_data.main, ["--dataset", "voc", "--data", str(voc), "--classes", "cat,dog",
                                           "--train-split", str(voc / "val.txt"), "--val-split",
                                           str(voc / "val.txt"), "--to", layout, "--output", str(out)]) == 0
        layouts[layout] = {"coco": {"dataset": "coco", "root": str(out), "val_split": "val"},
                           "yolo": {"dataset": "yolo", "root": str(out / "data.yaml")},
                           "labelme": {"dataset": "labelme", "root": str(out), "val_split": str(out / "val.txt")}
                           }[layout]
    results = {}
    rng = np.random.default_rng(0)
    reference = build_detection_dataset(base, train=False)
    noise = [rng.normal(0, 3, r.boxes.shape) for r in reference.records]
    for name, data in {"voc": base, **layouts}.items():
        dataset = build_detection_dataset(data, train=False)
        assert dataset.class_names == CLASSES
        detections = {r.image_id: {"boxes": r.boxes + n, "scores": np.linspace(0.9, 0.5, len(r.boxes)),
                                   "labels": r.labels} for r, n in zip(dataset.records, noise, strict=True)}
        out = score(detections, dataset, ["coco", "voc12"])
        results[name] = (out["coco"]["AP"], out["coco"]["AP50"], out["voc12"]["mAP"])
    assert len(set(results.values())) == 1, results


def test_a_detector_trains_on_a_yolo_dataset(tmp_path):
    data = make_yolo(tmp_path / "yolo")
    out = tmp_path / "run"
    assert run_cli(train_det.main, ["--dataset", "yolo", "--data", str(data), "--output", str(out), "--max-iter",
                                    "2", "--no-progress", "--workers", "0", "model.backbone=resnet18",
                                    "model.backbone_options={width: 8}", "model.min_size=[64]", "model.max_size=96",
                                    "model.anchor_sizes=[16,32,64]", "solver.ims_per_batch=2",
                                    "test.vis_images=0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["coco"]["AP"] is not None


# ----- a look at the data ---------------------------------------------------------------------------------------
def test_anchor_fit_by_hand():
    anchors = anchor_shapes([32], [0.5, 1.0, 2.0])
    np.testing.assert_allclose(anchors, [[32 * 2**0.5, 32 / 2**0.5], [32, 32], [32 / 2**0.5, 32 * 2**0.5]])
    best = best_anchor_iou(np.array([[32.0, 32.0], [16.0, 16.0], [64.0, 8.0]]), anchors)
    # the same square: 1; a square of a quarter of the area, inside it: 1/4; 64 x 8 against the 45 x 23 anchor:
    # intersection 45.25 x 8 = 362, union 512 + 1024 - 362
    np.testing.assert_allclose(best, [1.0, 0.25, 32 * 2**0.5 * 8 / (512 + 1024 - 32 * 2**0.5 * 8)])


def test_dataset_statistics_count_by_hand(tmp_path):
    voc = make_voc(tmp_path / "voc", stems=("a", "b", "c"))
    xml = (voc / "Annotations" / "b.xml").read_text().replace("</annotation>", "") + (
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>32</xmax>"
        "<ymax>20</ymax></bndbox></object></annotation>")  # the same dog box twice
    (voc / "Annotations" / "b.xml").write_text(xml)
    dataset = build_detection_dataset({"dataset": "voc", "root": str(voc), "classes": CLASSES,
                                       "train_split": str(voc / "val.txt")}, train=False, role="train")
    model = {**DEFAULTS["model"], "min_size": [64], "max_size": 1000, "anchor_sizes": [32], "aspect_ratios": [1.0]}
    stats = dataset_statistics(dataset, model)
    assert (stats["images"], stats["empty_images"], stats["boxes"], stats["duplicate_boxes"]) == (3, 1, 4, 1)
    assert stats["per_class"] == {"cat": {"boxes": 1, "images": 1, "ignored": 0},
                                  "dog": {"boxes": 3, "images": 2, "ignored": 0}}
    # image b (64 x 64) is seen at scale 1: its dog box 32 x 20 against the 32 x 32 anchor: IoU 640 / 1024
    assert sorted(stats["_fit"])[0] == pytest.approx(min(640 / 1024, *sorted(stats["_fit"])[:1]))


def test_browse_data_prints_draws_and_refuses_a_used_folder(tmp_path, capsys):
    data = make_yolo(tmp_path / "yolo")
    out = tmp_path / "browse"
    assert run_cli(browse_data.main, ["--dataset", "yolo", "--data", str(data), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 images (1 without objects), 3 boxes" in printed and "cat" in printed
    assert (out / "statistics_train.png").is_file() and (out / "statistics_val.png").is_file()
    assert len(list((out / "train").glob("*.jpg"))) == 3
    assert json.loads((out / "statistics.json").read_text())["train"]["per_class"]["dog"]["boxes"] == 2
    assert run_cli(browse_data.main, ["--dataset", "yolo", "--data", str(data), "--output", str(out)]) == 2
