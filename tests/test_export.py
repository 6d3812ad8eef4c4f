"""Deployment: classifiers and the detector exported to ONNX (checked with onnxruntime, an independent
runtime), TorchScript and torch.export programs, at input sizes other than the one exported with."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
from backbones.layers import calibrate_frozen_batchnorm
from backbones.saving import save_weights
from backbones.weights import WeightFile
from detection.build import build_detector, detector_checkpoint
from detection.train import DEFAULTS, OPEN_KEYS
from engine.checkpoint import save_checkpoint
from engine.cli import run_cli
from engine.config import load_config
from engine.export import detection_differences
from tools import export

ROOT = Path(__file__).resolve().parents[1]

onnxruntime = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # each export traces the model: seconds, not milliseconds


def run_onnx(path: Path, *inputs: torch.Tensor) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)})


def test_classifier_to_onnx_and_torchscript_at_other_sizes(tmp_path, capsys):
    torch.manual_seed(0)
    model = backbones.build_model("resnet18", 10, width=8).eval()
    save_weights(WeightFile(model.state_dict(), "test", "resnet18", {"width": 8}), tmp_path / "r18.pth")
    assert run_cli(export.main, ["--checkpoint", str(tmp_path / "r18.pth"), "--output", str(tmp_path / "r18.onnx"),
                                 "--size", "64", "64"]) == 0
    check = json.loads((tmp_path / "r18.onnx.check.json").read_text())  # the tool's own check, its numbers
    assert check["passed"] and [row["shape"] for row in check["inputs"]] == [[2, 3, 64, 64], [3, 3, 96, 128]]
    assert all(row["against"]["as trained"]["logits"] <= 1e-4 for row in check["inputs"])
    x = torch.randn(5, 3, 80, 48)
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(run_onnx(tmp_path / "r18.onnx", x)[0], expected.numpy(), rtol=1e-4, atol=1e-4)
    assert run_cli(export.main, ["--checkpoint", str(tmp_path / "r18.pth"), "--output", str(tmp_path / "r18.ts"),
                                 "--format", "torchscript", "--size", "64", "64"]) == 0
    torch.testing.assert_close(torch.jit.load(tmp_path / "r18.ts")(x), expected, rtol=1e-4, atol=1e-4)


def tiny_detector_file(folder, *overrides):
    cfg = load_config(DEFAULTS, ROOT / "configs" / "demo" / "shapes_resnet18_C4.yaml",
                      ["model.backbone_options.width=8", "model.min_size=[96]", "model.max_size=160", *overrides],
                      open_keys=OPEN_KEYS)
    torch.manual_seed(0)
    detector = build_detector(cfg, 3).eval()
    with torch.no_grad():
        detector.roi_heads.predictor.cls_score.weight.normal_(0, 0.3)
        detector.roi_heads.predictor.bbox_pred.weight.normal_(0, 0.05)
        image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
        calibrate_frozen_batchnorm(detector, lambda: detector([image]))
    path = folder / "model_final.pth"
    save_checkpoint(detector_checkpoint(detector, cfg, ["a", "b", "c"]), path)
    return detector, path


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return tiny_detector_file(tmp_path_factory.mktemp("det"))


def test_the_papers_detector_settings_export_too(tmp_path, capsys):
    """RoI pooling (ONNX MaxRoiPool) and the 16-pixel proposal minimum at the original scale, within the tool's
    own onnxruntime check (it exits 2 when the detections differ)."""
    _, path = tiny_detector_file(tmp_path, "model.roi.pooler=roipool", "model.rpn.min_box_size=16")
    assert run_cli(export.main, ["--checkpoint", str(path), "--output", str(tmp_path / "paper.onnx")]) == 0
    check = json.loads((tmp_path / "paper.onnx.check.json").read_text())
    assert check["passed"] and check["compared"] > 0
    assert {name for row in check["inputs"] for name in row["against"]} == {"inference copy", "as trained"}


def test_detector_to_onnx_gives_the_same_detections_at_other_sizes(tmp_path, detector_file, capsys):
    detector, path = detector_file
    out = tmp_path / "det.onnx"
    assert run_cli(export.main, ["--checkpoint", str(path), "--output", str(out)]) == 0
    check = json.loads(Path(f"{out}.check.json").read_text())  # the tool's own check: the sample photograph
    assert [row["shape"] for row in check["inputs"]] == [[3, 427, 640], [3, 320, 800]] and check["compared"] > 0
    image = torch.rand(3, 150, 110, generator=torch.Generator().manual_seed(2))  # resized inside to 96 x 70
    with torch.no_grad():
        expected = detector([image])[0]
    assert len(expected["boxes"]) > 10
    boxes, scores, labels = run_onnx(out, image)
    np.testing.assert_array_equal(labels, expected["labels"].numpy())
    np.testing.assert_allclose(scores, expected["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, expected["boxes"].numpy(), atol=1e-3)


@pytest.mark.parametrize("shape", [(500, 90), (60, 700)])
def test_detector_onnx_follows_the_resize_rule_at_every_shape(tmp_path_factory, detector_file, shape):
    """Tall and wide images take the max-size branch of the resize rule (the example took the min-size one):
    the exported graph computes sizes for each input, it did not freeze the example's."""
    detector, path = detector_file
    out = tmp_path_factory.getbasetemp() / "det_shapes.onnx"
    if not out.exists():
        assert run_cli(export.main, ["--checkpoint", str(path), "--output", str(out), "--no-check"]) == 0
    image = torch.rand(3, *shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = detector([image])[0]
    boxes, scores, labels = run_onnx(out, image)
    assert len(boxes) == len(expected["boxes"]) > 0
    np.testing.assert_array_equal(labels, expected["labels"].numpy())
    np.testing.assert_allclose(scores, expected["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, expected["boxes"].numpy(), atol=1e-3)


def test_detector_onnx_with_no_detections(tmp_path, detector_file):
    checkpoint = torch.load(detector_file[1], weights_only=True)
    checkpoint["config"]["model"]["roi"]["score_thresh"] = 1.0  # no probability exceeds it
    save_checkpoint(checkpoint, tmp_path / "strict.pth")
    out = tmp_path / "x.onnx"
    assert run_cli(export.main, ["--checkpoint", str(tmp_path / "strict.pth"), "--output", str(out)]) == 0
    assert json.loads(Path(f"{out}.check.json").read_text())["compared"] == 0  # and the tool said so
    boxes, scores, labels = run_onnx(out, torch.rand(3, 90, 120))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_detectors_are_not_traced_to_torchscript(tmp_path, detector_file, capsys):
    assert run_cli(export.main, ["--checkpoint", str(detector_file[1]), "--output", str(tmp_path / "x.ts"),
                                 "--format", "torchscript"]) == 2
    assert "detectors export to onnx" in capsys.readouterr().err


def test_detection_sets_compare_without_their_order():
    """Two detections whose scores differ in the last bits can leave onnxruntime in either order (this failed
    the export check of a tiny detector); distances by hand."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 50]])
    scores, labels = torch.tensor([0.9, 0.9000001]), torch.tensor([1, 2])
    swapped = (boxes.flip(0), scores.flip(0), labels.flip(0))
    assert detection_differences((boxes, scores, labels), swapped) == {"count": 2.0, "boxes": 0.0, "scores": 0.0}
    moved = (boxes + torch.tensor([[0.0, 0, 0, 3], [0, 0, 0, 0]]), scores - torch.tensor([0.0, 0.25]), labels)
    assert detection_differences((boxes, scores, labels), moved) == pytest.approx(
        {"count": 2.0, "boxes": 3.0, "scores": 0.25})  # a box and a score of one record each
    relabelled = (boxes, scores, torch.tensor([2, 1]))
    assert detection_differences((boxes, scores, labels), relabelled)["boxes"] == 40.0  # its label's box is the other
    assert detection_differences((boxes, scores, labels), (boxes[:1], scores[:1], labels[:1]))["boxes"] == float("inf")


def test_a_full_size_detector_exports_and_passes_its_check(tmp_path):
    """torchvision's fasterrcnn_resnet50_fpn as converted (ResNet-50 FPN, 90 classes, its conventions), its frozen
    BN calibrated on the sample photograph so that it detects things: the float32 rounding of 70 layers at 640 x 427
    is within the tolerances that scale with them (a fixed 1e-3 px refused such a model)."""
    cfg = load_config(DEFAULTS, "torchvision_R50_FPN", ["model.norm=frozen_bn", "model.roi.head_init=detectron2"],
                      open_keys=OPEN_KEYS)  # the small head weights of a trained detector, not nn.Linear's draw
    torch.manual_seed(0)
    detector = build_detector(cfg, 90).eval()
    image = torch.from_numpy(np.array(__import__("PIL.Image").Image.open(export.SAMPLE_IMAGE).convert("RGB")))
    image = image.permute(2, 0, 1).float() / 255
    with torch.no_grad():
        detector.roi_heads.predictor.cls_score.weight.normal_(0, 0.05)
        calibrate_frozen_batchnorm(detector, lambda: detector([image]))
    path = save_checkpoint(detector_checkpoint(detector, cfg, [f"c{i}" for i in range(90)]), tmp_path / "r50.pth")
    assert run_cli(export.main, ["--checkpoint", str(path), "--output", str(tmp_path / "r50.onnx")]) == 0
    check = json.loads((tmp_path / "r50.onnx.check.json").read_text())
    assert check["passed"] and check["compared"] > 0 and check["layers"] > 60
