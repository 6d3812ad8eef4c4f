"""A corpus of bad inputs through the real command-line entry points: every one must end in one line
`error: <file or flag>: <problem>` on stderr and exit code 2, with no traceback; nothing is silently accepted."""

import json
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy._core.multiarray import _reconstruct
from PIL import Image

import backbones
from detection.build import MODEL_DEFAULTS, build_detector, detector_checkpoint
from detection.data.shapes import make_shapes
from engine.checkpoint import save_checkpoint
from engine.cli import run_cli
from tests.helpers import DEMO_CONFIG, ROOT, TINY_DETECTOR, voc_xml
from tools import convert_weights, eval_cls, eval_det, export, predict, train_cls, train_det
from tools import make_shapes as make_shapes_tool


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A valid PNG of a few dozen bytes whose header declares side x side pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def bomb_jpeg(path: Path) -> Path:
    """A small JPEG whose frame header (SOF0) is rewritten to declare 60000 x 60000 pixels."""
    Image.new("RGB", (16, 16), "red").save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    path.write_bytes(bytes(data))
    return path


class _Array:
    """Pickles as numpy pickles an array, with the pre-allocation shape, dtype and data chosen freely."""

    def __init__(self, start_shape, shape, dtype, raw):
        self.args = (np.ndarray, start_shape, b"b")
        self.state = (1, shape, np.dtype(dtype), False, raw)

    def __reduce__(self):
        return _reconstruct, self.args, self.state


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    c = {"root": root}
    shapes = root / "shapes"
    make_shapes(shapes, num_train=4, num_val=2, seed=1, min_side=96, max_side=112)
    c["shapes"] = shapes
    # a shapes copy whose first training and validation images are decompression bombs
    bombed = root / "bombed_shapes"
    shutil.copytree(shapes, bombed)
    for split in ("train", "val"):
        data = json.loads((bombed / "annotations" / f"instances_{split}.json").read_text())
        bomb_png(bombed / split / data["images"][0]["file_name"])
    c["bombed_shapes"] = bombed
    cfg = {"model": {**MODEL_DEFAULTS, "backbone": "resnet18", "backbone_options": {"width": 8}, "min_size": [96],
                     "max_size": 160}}
    c["detector"] = save_checkpoint(detector_checkpoint(build_detector(cfg, 3), cfg, ["ellipse", "rectangle",
                                                                                       "triangle"]),
                                    root / "det.pth")
    classifier = backbones.build_model("resnet18", width=8)
    c["classifier"] = save_checkpoint({"arch": "resnet18", "options": {"width": 8},
                                       "state_dict": classifier.state_dict()}, root / "cls.pth")
    c["png_bomb"], c["jpeg_bomb"] = bomb_png(root / "bomb.png"), bomb_jpeg(root / "bomb.jpg")
    imagenet = root / "imagenet"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (imagenet / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(imagenet / split / name / f"{i}.png")
    bomb_png(imagenet / "train" / "a" / "0.png")
    c["imagenet"] = imagenet
    # results files
    gt = shapes / "annotations" / "instances_val.json"
    c["gt"] = gt
    image_id = json.loads(gt.read_text())["images"][0]["id"]
    good = {"image_id": image_id, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0], "score": 0.9}
    bad_results = {"id_string": {**good, "image_id": "one"}, "bbox_3": {**good, "bbox": [1.0, 2.0, 10.0]},
                   "nan_score": {**good, "score": float("nan")}, "inf_coord": {**good, "bbox": [1, 2, float("inf"), 3]},
                   "negative_width": {**good, "bbox": [5.0, 5.0, -3.0, 4.0]}}
    (root / "good.json").write_text(json.dumps([good]))
    for name, entry in bad_results.items():
        (root / f"{name}.json").write_text(json.dumps([good, entry]))  # json writes NaN / Infinity literals
    # pickles: a pre-allocated terabyte array, an object array, a terabyte shape without its bytes
    for name, array in (("prealloc", _Array((10**12,), (10**12,), "f4", b"")),
                        ("objects", _Array((0,), (2,), "O", ["a", "b"])),
                        ("claims", _Array((0,), (10**6, 10**6), "f8", b"\0" * 16))):
        with open(root / f"{name}.pkl", "wb") as f:
            pickle.dump({"blobs": {"conv1_w": array}}, f, protocol=2)
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump({b"data": _Array((0,), (2,), "O", ["x", "y"]), b"labels": [0, 1]}, f, protocol=2)
    c["cifar"] = cifar.parent
    devkit = root / "devkit"
    devkit.mkdir()
    (devkit / "comp4_det_val_ellipse.txt").write_text("000001 nan 1 1 5 5\n")
    c["devkit"] = devkit
    recipe = root / "recipe.yaml"
    recipe.write_text("solver:\n  ims_per_batch: 0\n")
    c["recipe"] = recipe
    c["bomb_xml"] = root / "laughs"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (c["bomb_xml"] / sub).mkdir(parents=True)
    (c["bomb_xml"] / "Annotations" / "a.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;">]>'
        "<annotation><size><width>9</width><height>9</height></size><name>&b;</name></annotation>")
    (c["bomb_xml"] / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    (c["bomb_xml"] / "Annotations" / "b.xml").write_text(voc_xml([]))
    corrupt = root / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    c["corrupt"] = corrupt
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("x")
    return c


def train_det_args(c, *extra):
    return ["--config", DEMO_CONFIG, "--data", str(c["shapes"]), "--output", str(c["root"] / "out_det"),
            "--max-iter", "1", "--no-progress", *TINY_DETECTOR, *extra]


def train_cls_args(c, *extra):
    return ["--arch", "cifar_resnet20", "--output", str(c["root"] / "out_cls"), "--max-iter", "1", "--no-progress",
            "--workers", "0", "model.options.width=4", "data.synthetic.train_size=8", "data.synthetic.val_size=4",
            "--batch-size", "4", *extra]


def predict_args(c, source, *extra):
    return ["--checkpoint", str(c["detector"]), "--input", str(source), "--output", str(c["root"] / "out_pred"),
            "--no-progress", *extra]


# a CUDA device this machine does not have: any on a CPU-only machine, the next index on one with GPUs
MISSING = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
MISSING_WHY = (f"this machine has {torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else
               "this machine has no CUDA device")

CASES = [
    # numbers out of range, from flags, overrides and recipe files
    ("max_iter_zero", train_det, lambda c: train_det_args(c, "--max-iter", "0"),
     "--max-iter: solver.max_iter must be >= 1"),
    ("max_iter_negative", train_det, lambda c: train_det_args(c, "--max-iter", "-5"),
     "--max-iter: solver.max_iter must be >= 1, got -5"),
    ("ims_per_batch_zero", train_det, lambda c: train_det_args(c, "--ims-per-batch", "0"),
     "--ims-per-batch: solver.ims_per_batch must be >= 1, got 0"),
    ("accumulate_zero", train_det, lambda c: train_det_args(c, "--accumulate", "0"),
     "--accumulate: solver.accumulate must be >= 1, got 0"),
    ("workers_negative", train_det, lambda c: train_det_args(c, "--workers", "-1"),
     "--workers: data.workers must be >= 0, got -1"),
    ("eval_period_negative", train_det, lambda c: train_det_args(c, "--eval-period", "-1"),
     "--eval-period: train.eval_period must be >= 0, got -1"),
    ("override_zero", train_det, lambda c: train_det_args(c, "solver.max_iter=0"), "override 'solver.max_iter=0'"),
    ("override_score", train_det, lambda c: train_det_args(c, "model.roi.score_thresh=2"),
     "override 'model.roi.score_thresh=2': model.roi.score_thresh must be between 0 and 1, got 2"),
    ("recipe_zero", train_det, lambda c: ["--config", str(c["recipe"]), "--data", str(c["shapes"]), "--output",
                                          str(c["root"] / "o")], "recipe.yaml: solver.ims_per_batch must be >= 1"),
    ("cls_batch_zero", train_cls, lambda c: train_cls_args(c, "--batch-size", "0"),
     "--batch-size: solver.batch_size must be >= 1, got 0"),
    ("cls_max_iter_zero", train_cls, lambda c: train_cls_args(c, "--max-iter", "0"),
     "--max-iter: solver.max_iter must be >= 1, got 0"),
    ("cls_accumulate_zero", train_cls, lambda c: train_cls_args(c, "--accumulate", "0"),
     "--accumulate: solver.accumulate must be >= 1, got 0"),
    ("cls_workers_negative", train_cls, lambda c: train_cls_args(c, "--workers", "-2"),
     "--workers: data.workers must be >= 0, got -2"),
    ("export_size_zero", export, lambda c: ["--checkpoint", str(c["detector"]), "--output", str(c["root"] / "x.onnx"),
                                            "--size", "0", "0"], "--size: must be a positive integer"),
    ("eval_det_batch_zero", eval_det, lambda c: ["--checkpoint", str(c["detector"]), "--dataset", "shapes", "--data",
                                                 str(c["shapes"]), "--batch-size", "0"],
     "--batch-size: must be a positive integer, got '0'"),
    ("predict_batch_zero", predict, lambda c: predict_args(c, c["shapes"] / "val", "--batch-size", "0"),
     "--batch-size: must be a positive integer, got '0'"),
    ("eval_cls_batch_zero", eval_cls, lambda c: ["--checkpoint", str(c["classifier"]), "--dataset", "synthetic",
                                                 "--batch-size", "0"], "--batch-size: must be a positive integer"),
    ("eval_cls_ours_as_weights", eval_cls, lambda c: ["--weights", str(c["classifier"]), "--dataset", "synthetic"],
     "a classifier this toolkit trained; give it with --checkpoint"),
    ("eval_det_results_batch", eval_det, lambda c: ["--annotations", str(c["gt"]), "--results",
                                                    str(c["root"] / "id_string.json"), "--batch-size", "4"],
     "--batch-size, --workers, --device, --amp and --compile run a detector: they do not apply to --results"),
    ("eval_det_split_annotations", eval_det, lambda c: ["--annotations", str(c["gt"]), "--results",
                                                        str(c["root"] / "id_string.json"), "--split", "val"],
     "--split names a split of --dataset/--data; --annotations is the evaluation set itself"),
    ("eval_det_json_no_eval", eval_det, lambda c: ["--checkpoint", str(c["detector"]), "--dataset", "shapes",
                                                   "--data", str(c["shapes"]), "--no-eval", "--output",
                                                   str(c["root"] / "sub"), "--json", str(c["root"] / "m.json")],
     "--json writes scores, which --no-eval does not compute"),
    ("make_shapes_zero", make_shapes_tool, lambda c: ["--out", str(c["root"] / "s"), "--num-train", "0"],
     "--num-train: must be a positive integer, got '0'"),
    # a device that is not there
    ("cuda", train_cls, lambda c: train_cls_args(c, "--device", MISSING), f"--device {MISSING}: {MISSING_WHY}"),
    ("cuda_det", train_det, lambda c: train_det_args(c, "--device", MISSING), f"--device {MISSING}: {MISSING_WHY}"),
    ("device_name", eval_det, lambda c: ["--checkpoint", str(c["detector"]), "--dataset", "shapes", "--data",
                                         str(c["shapes"]), "--device", "gpu"], "--device 'gpu': not a device"),
    ("predict_cuda", predict, lambda c: predict_args(c, c["shapes"] / "val", "--device", MISSING),
     f"--device {MISSING}: {MISSING_WHY}"),
    ("eval_cls_cuda", eval_cls, lambda c: ["--checkpoint", str(c["classifier"]), "--dataset", "synthetic",
                                           "--device", MISSING], f"--device {MISSING}: {MISSING_WHY}"),
    # results files
    *[(f"results_{name}", eval_det, lambda c, name=name: ["--annotations", str(c["gt"]), "--results",
                                                          str(c["root"] / f"{name}.json")],
       f"{name}.json: detection 1 has {what}")
      for name, what in (("id_string", "image_id 'one'"), ("bbox_3", "bbox [1.0, 2.0, 10.0]"),
                         ("nan_score", "score nan"), ("inf_coord", "bbox [1, 2, inf, 3]"),
                         ("negative_width", "bbox [5.0, 5.0, -3.0, 4.0] with a negative width"))],
    ("devkit_nan", eval_det, lambda c: ["--dataset", "shapes", "--data", str(c["shapes"]), "--split", "val",
                                        "--results", str(c["devkit"]), "--metric", "voc07"],
     "comp4_det_val_ellipse.txt:1: score and box must be finite"),
    # decompression bombs, wherever an image is read
    ("predict_png_bomb", predict, lambda c: predict_args(c, c["png_bomb"]), "bomb.png: image too large"),
    ("predict_jpeg_bomb", predict, lambda c: predict_args(c, c["jpeg_bomb"]), "bomb.jpg: image too large"),
    ("train_cls_bomb", train_cls, lambda c: ["--arch", "resnet18", "--dataset", "imagenet", "--data",
                                             str(c["imagenet"]), "--output", str(c["root"] / "oc"), "--max-iter",
                                             "1", "--batch-size", "6", "--workers", "0", "model.options.width=8",
                                             "data.crop_size=32", "data.scale_range=[36,40]", "data.test_resize=36"],
     "0.png: image too large"),
    ("train_det_bomb", train_det, lambda c: ["--config", DEMO_CONFIG, "--data", str(c["bombed_shapes"]), "--output",
                                             str(c["root"] / "ob"), "--max-iter", "2", "--no-progress",
                                             *TINY_DETECTOR], "000001.png: image too large"),
    ("eval_det_bomb", eval_det, lambda c: ["--checkpoint", str(c["detector"]), "--dataset", "shapes", "--data",
                                           str(c["bombed_shapes"]), "--workers", "0"], "000001.png: image too large"),
    # pickles that declare what they do not hold, or hold objects
    ("pickle_prealloc", convert_weights, lambda c: ["--src", str(c["root"] / "prealloc.pkl"), "--output",
                                                    str(c["root"] / "w.pth")], "prealloc.pkl: not a readable"),
    ("pickle_objects", convert_weights, lambda c: ["--src", str(c["root"] / "objects.pkl"), "--output",
                                                   str(c["root"] / "w.pth")], "array of Python objects"),
    ("pickle_claims", convert_weights, lambda c: ["--src", str(c["root"] / "claims.pkl"), "--output",
                                                  str(c["root"] / "w.pth")], "claims.pkl: not a readable"),
    ("cifar_objects", train_cls, lambda c: ["--arch", "cifar_resnet20", "--dataset", "cifar10", "--data",
                                            str(c["cifar"]), "--output", str(c["root"] / "oc2")],
     "data_batch_1: not a CIFAR-10 python batch (refusing an array of Python objects"),
    # paths of the wrong kind, named as the user gave them
    ("dst_is_folder", convert_weights, lambda c: ["--src", str(c["classifier"]), "--output",
                                                  str(c["root"] / "a_folder")], "a_folder: is a folder"),
    ("export_to_folder", export, lambda c: ["--checkpoint", str(c["classifier"]), "--output",
                                            str(c["root"] / "a_folder"), "--no-check"], "a_folder: is a folder"),
    ("output_is_file", train_det, lambda c: [*train_det_args(c)[:4], "--output", str(c["root"] / "a_file"),
                                             "--max-iter", "1"], "a_file: --output exists and is not a folder"),
    ("json_is_folder", eval_det, lambda c: ["--annotations", str(c["gt"]), "--results", str(c["root"] / "good.json"),
                                            "--json", str(c["root"] / "a_folder")], "a_folder: Is a directory"),
    # classes handled before, kept handled
    ("missing_checkpoint", predict, lambda c: ["--checkpoint", str(c["root"] / "nope.pth"), "--input",
                                               str(c["shapes"] / "val"), "--output", str(c["root"] / "p")],
     "nope.pth: checkpoint not found"),
    ("corrupt_checkpoint", eval_det, lambda c: ["--checkpoint", str(c["corrupt"]), "--dataset", "shapes", "--data",
                                                str(c["shapes"])], "corrupt.pth"),
    ("unknown_key", train_det, lambda c: train_det_args(c, "solver.lrr=1"), "unknown key 'solver.lrr'"),
    ("wrong_type", train_det, lambda c: train_det_args(c, "solver.lr=fast"), "solver.lr"),
    ("unsafe_xml", eval_det, lambda c: ["--dataset", "voc", "--data", str(c["bomb_xml"]), "--split", "trainval",
                                        "--results", str(c["devkit"])], "a.xml: refused unsafe XML"),
    ("missing_data", train_det, lambda c: [*train_det_args(c)[:2], "--data", str(c["root"] / "nowhere"),
                                           *train_det_args(c)[4:]], "nowhere: dataset folder not found"),
    ("no_dataset", eval_det, lambda c: ["--results", str(c["gt"])], "give --annotations"),
    ("unknown_flag", predict, lambda c: ["--checkpoint", "x", "--input", "y", "--output", "z", "--frobnicate"],
     "unrecognized arguments: --frobnicate"),
    ("missing_flag", train_det, lambda c: ["--max-iter", "1"], "the following arguments are required: --output"),
]


@pytest.mark.parametrize("name,tool,argv,expected", CASES, ids=[getattr(c, "values", c)[0] for c in CASES])
def test_bad_input_is_one_line_naming_it_and_exit_code_2(corpus, capsys, name, tool, argv, expected):
    code = run_cli(tool.main, argv(corpus))
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert expected in errors[0], errors[0]


def test_unreadable_images_are_skipped_and_counted_where_asked(corpus, capsys):
    argv = ["--arch", "resnet18", "--dataset", "imagenet", "--data", str(corpus["imagenet"]), "--output",
            str(corpus["root"] / "skips"), "--max-iter", "1", "--batch-size", "6", "--workers", "0", "--no-progress",
            "model.options.width=8", "data.crop_size=32", "data.scale_range=[36,40]", "data.test_resize=36",
            "--skip-bad-images"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable training images"):
        assert run_cli(train_cls.main, argv) == 0
    photos = corpus["root"] / "photos"
    photos.mkdir()
    shutil.copy(corpus["png_bomb"], photos / "bomb.png")
    shutil.copy(corpus["shapes"] / "val" / "000001.png", photos / "fine.png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert run_cli(predict.main, predict_args(corpus, photos, "--skip-bad-images", "--score-thresh", "0")) == 0
    results = json.loads((corpus["root"] / "out_pred" / "results.json").read_text())
    assert {r["file_name"] for r in results} == {"fine.png"}  # the readable image was predicted, the bomb skipped
    drawn = corpus["root"] / "out_pred"
    assert (drawn / "fine.png").is_file() and not (drawn / "bomb.png").exists()
    capsys.readouterr()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would measure it")
def test_gpu_figures_without_a_gpu_is_one_line_and_exit_code_2():
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_figures"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: CUDA: no GPU visible")
    assert len(result.stderr.strip().splitlines()) == 1
