"""Detection datasets: the shapes generator, COCO and VOC readers, augmentation, and their bad inputs."""

import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detection.data import CocoDetection, VOCDetection, collate_detection, voc_image_sets
from detection.data.catalog import build_detection_dataset
from detection.data.shapes import SHAPE_CLASSES, make_shapes, place_objects
from detection.data.transforms import DetectionAugmentation
from engine.errors import UserError
from tests.helpers import voc_xml


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, num_train=24, num_val=6, seed=3, min_side=96, max_side=128)
    return out


def test_shapes_set_is_deterministic_and_well_formed(shapes_dir, tmp_path):
    again = make_shapes(tmp_path, num_train=24, num_val=6, seed=3, min_side=96, max_side=128)
    assert again["train"].read_bytes() == (shapes_dir / "annotations" / "instances_train.json").read_bytes()
    assert (tmp_path / "train" / "000005.png").read_bytes() == (shapes_dir / "train" / "000005.png").read_bytes()
    data = json.loads(again["train"].read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    per_image = {img["id"]: 0 for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] += 1
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        assert 0 <= x < x + w <= img["width"] and 0 <= y < y + h <= img["height"]
    assert 0 in per_image.values() and max(per_image.values()) >= 2  # empty images and crowded ones
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3}


def test_shapes_that_touch_never_share_a_colour():
    """Two touching shapes of one colour read as one blob with a box that is neither (seen in the demo's
    validation set); the colours are measured from the drawn pixels: the median of each shape's visible part."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        img = np.full((96, 96, 3), 128, np.float32)
        drawn = place_objects(rng, img, 12, max_occlusion=0.5, min_contrast=90.0)
        visible = [m.astype(bool) for _, m, _ in drawn]
        for i in range(len(visible)):
            for later in visible[i + 1:]:
                visible[i] &= ~later
        colours = [np.median(img[v], axis=0) if v.sum() >= 8 else None for v in visible]
        for i, (_, a, _) in enumerate(drawn):
            near = cv2.dilate(a, np.ones((3, 3), np.uint8)).astype(bool)
            for j, (_, b, _) in enumerate(drawn[:i]):
                if (near & b.astype(bool)).any() and colours[i] is not None and colours[j] is not None:
                    assert np.linalg.norm(colours[i] - colours[j]) > 0.8 * 90.0, (i, j)


def test_coco_dataset_targets_and_training_skips_empty_images(shapes_dir):
    ann = shapes_dir / "annotations" / "instances_train.json"
    full = CocoDetection(ann, shapes_dir / "train")
    train = CocoDetection(ann, shapes_dir / "train", train=True)
    assert len(full) == 24 and len(train) == sum(1 for r in full.records if len(r.labels))
    image, target = train[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].min() >= 1 and target["image_id"] == train.records[0].image_id
    images, targets = collate_detection([train[0], train[1]])
    assert len(images) == len(targets) == 2
    data = {"dataset": "shapes", "root": str(shapes_dir)}
    assert build_detection_dataset(data, train=False).class_names == list(SHAPE_CLASSES)
    assert len(build_detection_dataset(data, train=True)) == len(train)
    assert len(build_detection_dataset({**data, "keep_empty": True}, train=True)) == len(full)


def test_horizontal_flip_moves_boxes_with_the_pixels():
    image = np.zeros((20, 30, 3), np.uint8)
    image[5:10, 2:8] = 255
    aug = DetectionAugmentation(flip_prob=1.0)
    out, target = aug(image, {"boxes": np.array([[2, 5, 8, 10]], np.float32), "labels": np.array([1]),
                              "image_id": 0})
    assert target["boxes"].tolist() == [[22.0, 5.0, 28.0, 10.0]]
    _ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1) == (22, 28)
    torch.manual_seed(1)
    a = DetectionAugmentation(photometric=True)(image, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0),
                                                       "image_id": 0})[0]
    torch.manual_seed(1)
    b = DetectionAugmentation(photometric=True)(image, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0),
                                                       "image_id": 0})[0]
    assert torch.equal(a, b)  # reseeded from torch: reproducible per sample


def _coco(tmp_path, images=None, annotations=None, categories=None):
    data = {"images": images if images is not None else [{"id": 1, "file_name": "a.png", "width": 10,
                                                           "height": 8}],
            "annotations": annotations if annotations is not None else [],
            "categories": categories if categories is not None else [{"id": 5, "name": "thing"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    return path


def test_coco_bad_inputs_name_the_file_and_entry(tmp_path):
    ann = tmp_path / "bad.json"
    ann.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: malformed JSON"):
        CocoDetection(ann, None)
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserError, match="bad.json: missing list 'categories'"):
        CocoDetection(ann, None)
    path = _coco(tmp_path, annotations=[{"id": 7, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(UserError, match=r"ann.json: annotations\[0\] has unknown category_id 9"):
        CocoDetection(path, tmp_path / "img")
    path = _coco(tmp_path, annotations=[{"id": 7, "image_id": 1, "category_id": 5}])
    with pytest.raises(UserError, match=r"ann.json: annotations\[0\] lacks bbox"):
        CocoDetection(path, tmp_path / "img")
    for name in ("../outside.png", "/etc/passwd"):
        path = _coco(tmp_path, images=[{"id": 1, "file_name": name, "width": 10, "height": 8}])
        with pytest.raises(UserError, match="image 1: file_name"):
            CocoDetection(path, tmp_path / "img")[0]
    path = _coco(tmp_path, images=[{"id": 1, "file_name": "missing.png", "width": 10, "height": 8}])
    with pytest.raises(UserError, match="missing.png: image file not found"):
        CocoDetection(path, tmp_path / "img")[0]
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    path = _coco(tmp_path, images=[{"id": 1, "file_name": "broken.png", "width": 10, "height": 8}])
    with pytest.raises(UserError, match="broken.png: unreadable image"):
        CocoDetection(path, tmp_path / "img")[0]


def test_coco_boxes_outside_the_image_are_clipped_and_empty_ones_dropped_with_a_count(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [-2, 1, 5, 3]},  # clipped at x = 0
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [3, 3, 0, 4]},  # zero width: dropped
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [12, 1, 3, 3]},  # right of the image: dropped
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2], "iscrowd": 1}]
    path = _coco(tmp_path, annotations=anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(path, tmp_path / "img", train=True)
    assert any("clipped 1 boxes to their image, dropped 2 boxes" in str(w.message) for w in caught)
    assert ds.records[0].boxes.tolist() == [[0, 1, 3, 4], [1, 1, 3, 3]]
    assert ds[0][1]["boxes"].tolist() == [[0, 1, 3, 4]]  # the crowd box is not a training target
    assert ds.label_to_category == {1: 5}


@pytest.fixture
def vocdevkit(tmp_path):
    root = tmp_path / "VOCdevkit"
    layout = {"2007": {"trainval": ["000005", "000007"], "test": ["000001"]}, "2012": {"trainval": ["2008_000002"]}}
    for year, sets in layout.items():
        base = root / f"VOC{year}"
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (base / sub).mkdir(parents=True)
        for split, ids in sets.items():
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
            for i in ids:
                objects = [("dog", (11, 6, 30, 25), False), ("person", (2, 2, 8, 9), True)]
                (base / "Annotations" / f"{i}.xml").write_text(voc_xml(objects))
                Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(base / "JPEGImages" / f"{i}.jpg")
    return root


def test_voc_named_sets_coordinates_and_difficult_objects(vocdevkit):
    assert voc_image_sets("voc0712", "trainval") == [("2007", "trainval"), ("2012", "trainval")]
    assert voc_image_sets("voc07++12", "trainval") == [("2007", "trainval"), ("2007", "test"), ("2012", "trainval")]
    assert voc_image_sets("voc07++12", "test") == [("2012", "test")]
    assert len(VOCDetection(vocdevkit, "voc0712", "trainval")) == 3
    assert len(VOCDetection(vocdevkit, "voc07++12", "trainval")) == 4
    ds = VOCDetection(vocdevkit, "voc07", "trainval", train=True)
    rec = ds.records[0]
    assert rec.name == "2007/000005" and rec.boxes.tolist() == [[10, 5, 30, 25], [1, 1, 8, 9]]
    assert rec.labels.tolist() == [12, 15] and rec.ignore.tolist() == [False, True]
    assert ds[0][1]["labels"].tolist() == [12]  # difficult left out of training
    assert VOCDetection(vocdevkit, "voc07", "trainval", train=True, keep_difficult=True)[0][1]["labels"].tolist() \
        == [12, 15]
    with pytest.raises(UserError, match="ImageSets/Main/val.txt: image set not found"):
        VOCDetection(vocdevkit, "voc07", "val")


def test_voc_bad_xml_is_refused_naming_the_file(vocdevkit):
    ann = vocdevkit / "VOC2007" / "Annotations" / "000005.xml"
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            "<annotation><size><width>1</width><height>1</height></size><name>&lol2;</name></annotation>")
    ann.write_text(bomb)
    with pytest.raises(UserError, match="000005.xml: refused unsafe XML"):
        VOCDetection(vocdevkit, "voc07", "trainval")
    ann.write_text("<annotation><size>")
    with pytest.raises(UserError, match="000005.xml: malformed XML"):
        VOCDetection(vocdevkit, "voc07", "trainval")
    ann.write_text(voc_xml([("unicorn", (1, 1, 5, 5), False)]))
    with pytest.raises(UserError, match="000005.xml: object of class 'unicorn', which is not one of the classes"):
        VOCDetection(vocdevkit, "voc07", "trainval")
    ann.write_text(voc_xml([("dog", ("a", 1, 5, 5), False)]))
    with pytest.raises(UserError, match="000005.xml object 0: missing or non-numeric <xmin>"):
        VOCDetection(vocdevkit, "voc07", "trainval")


def test_real_voc_annotation_from_the_shared_samples(shared_data):
    ds = VOCDetection(shared_data / "openmmlab-testdata" / "VOCdevkit", "voc07", "test")
    rec = ds.records[0]
    assert (rec.width, rec.height) == (353, 500) and ds[0][0].shape == (3, 500, 353)
    assert [ds.class_names[label - 1] for label in rec.labels] == ["dog", "person"]
    assert rec.boxes[0].tolist() == [47.0, 239.0, 195.0, 371.0]  # <bndbox> 48 240 195 371, 1-based


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'kitti'"):
        build_detection_dataset({"dataset": "kitti", "root": str(tmp_path)}, train=True)
    with pytest.raises(UserError, match="nowhere: dataset folder not found"):
        build_detection_dataset({"dataset": "coco", "root": str(tmp_path / "nowhere")}, train=True)


def test_coco_test_dev_image_info_file_without_annotations(tmp_path):
    """COCO test-dev ships `image_info_test-dev2017.json`: images and categories, no annotations."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "test2017").mkdir()  # where COCO keeps test-dev's images
    Image.new("RGB", (40, 30)).save(tmp_path / "test2017" / "a.jpg")
    info = {"images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
    (tmp_path / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    dataset = build_detection_dataset({"dataset": "coco", "root": str(tmp_path)}, train=False, split="test-dev2017")
    assert len(dataset) == 1 and dataset.class_names == ["person", "car"]
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and target["boxes"].shape == (0, 4)
