"""Weights from elsewhere: MSRA / Caffe2 pickles, detectron2 checkpoints, timm and torchvision files, read safely."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import backbones
from detection.build import MODEL_DEFAULTS, build_detector, import_detector
from engine.cli import run_cli
from engine.errors import UserError
from tests.helpers import ROOT, detectron2_names, write_poisoned_pickle

EPS = 1e-5


def caffe2_blobs(model: nn.Module) -> dict[str, np.ndarray]:
    """The model in the Caffe2 Detectron naming, each BN folded into a scale and shift as Caffe2 stores it.
    Written from the naming scheme (conv1_w, res_conv1_bn_s, res<stage>_<block>_branch<1|2a|2b|2c>...)."""
    state = model.state_dict()
    blobs = {}

    def put_bn(prefix: str, name: str) -> None:
        scale = state[prefix + "weight"] / torch.sqrt(state[prefix + "running_var"] + EPS)
        blobs[name + "_s"] = scale.numpy()
        blobs[name + "_b"] = (state[prefix + "bias"] - state[prefix + "running_mean"] * scale).numpy()

    blobs["conv1_w"] = state["conv1.weight"].numpy()
    put_bn("bn1.", "res_conv1_bn")
    for stage in range(1, 5):
        for block in range(len(getattr(model, f"layer{stage}"))):
            src, dst = f"layer{stage}.{block}.", f"res{stage + 1}_{block}_"
            for index, branch in enumerate(("2a", "2b", "2c"), start=1):
                blobs[f"{dst}branch{branch}_w"] = state[f"{src}conv{index}.weight"].numpy()
                put_bn(f"{src}bn{index}.", f"{dst}branch{branch}_bn")
            if f"{src}downsample.0.weight" in state:
                blobs[f"{dst}branch1_w"] = state[f"{src}downsample.0.weight"].numpy()
                put_bn(f"{src}downsample.1.", f"{dst}branch1_bn")
    blobs["fc1000_w"] = state["fc.weight"].numpy()
    blobs["fc1000_b"] = state["fc.bias"].numpy()
    blobs["fc1000_w_momentum"] = np.zeros(1, np.float32)  # training state that model-zoo files carry
    return blobs


def assert_reproduces(weights: backbones.WeightFile, model: nn.Module) -> None:
    """The MSRA-layout ResNet-50 rebuilt from `weights` gives `model`'s logits (BGR input convention noted)."""
    assert weights.input_format["channel_order"] == "BGR"
    ours = backbones.build_model("resnet50", stride_in_1x1=True, width=8)
    backbones.load_weights(ours, weights, arch="resnet50")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), model(x), rtol=1e-3, atol=1e-3)  # BN folded in float32


@pytest.fixture
def msra_file(tmp_path):
    model = backbones.build_model("resnet50", stride_in_1x1=True, width=8).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": caffe2_blobs(model)}, f, protocol=2)
    return model, path


def test_msra_pickle_loads_and_reproduces_the_known_model(msra_file):
    model, path = msra_file
    weights = backbones.read_weights(path)
    assert weights.arch == "resnet50" and weights.options == {"stride_in_1x1": True}
    assert_reproduces(weights, model)


def test_msra_weights_need_their_stride_and_input_convention_in_the_detector(msra_file):
    _, path = msra_file
    cfg = {"model": copy.deepcopy(MODEL_DEFAULTS)}
    cfg["model"].update(backbone="resnet50", backbone_options={"width": 8}, weights=str(path))
    with pytest.raises(UserError, match="trained with stride_in_1x1=true"):
        build_detector(cfg, 3)
    cfg["model"]["backbone_options"]["stride_in_1x1"] = True
    taken_over = copy.deepcopy(cfg)
    model = build_detector(taken_over, 3)  # left unset, the input convention is the weights' own
    assert model.transform.channel_order == "BGR" and taken_over["model"]["pixel_std"] == [1.0, 1.0, 1.0]
    assert model.transform.pixel_mean.flatten().tolist() == pytest.approx([103.53, 116.28, 123.675])
    cfg["model"].update(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375], channel_order="RGB")
    with pytest.raises(UserError, match="expect BGR input .* set model.pixel_mean=\\[103.53"):
        build_detector(cfg, 3)  # set otherwise explicitly: refused


def test_a_poisoned_model_zoo_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "R-101.pkl"
    write_poisoned_pickle(path, lambda payload: {"blobs": {"conv1_w": payload}}, tmp_path / "pwned")
    with pytest.raises(UserError, match="R-101.pkl: not a readable model-zoo pickle .*refusing to load posix.system"):
        backbones.read_weights(path)
    assert not (tmp_path / "pwned").exists()
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"rpn_conv_w": np.zeros(3, np.float32)}}, f, protocol=2)
    with pytest.raises(UserError, match="unexpected blob 'rpn_conv_w'"):
        backbones.read_weights(path)


def test_convert_weights_round_trips_torchvision_and_msra(tmp_path, msra_file, capsys):
    import torchvision

    from tools import convert_weights

    reference = torchvision.models.resnet18()
    src = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), src)
    assert run_cli(convert_weights.main, ["--from", "torchvision", "--src", str(src), "--output",
                                          str(tmp_path / "ours.pth")]) == 0
    assert torch.load(tmp_path / "ours.pth", weights_only=True)["arch"] == "resnet18"
    assert run_cli(convert_weights.main, ["--from", "ours", "--src", str(tmp_path / "ours.pth"), "--output",
                                          str(tmp_path / "back.pth"), "--to", "torchvision"]) == 0
    back = torchvision.models.resnet18()
    back.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))

    model, pkl = msra_file
    out = tmp_path / "r50.safetensors"
    assert run_cli(convert_weights.main, ["--from", "msra", "--src", str(pkl), "--output", str(out),
                                          "-o", "width=8"]) == 0
    weights = backbones.read_weights(out)
    assert weights.arch == "resnet50" and weights.options == {"stride_in_1x1": True, "width": 8}
    assert_reproduces(weights, model)
    assert run_cli(convert_weights.main, ["--from", "msra", "--src", str(pkl), "--output", str(tmp_path / "x.pth"),
                                          "--to", "torchvision", "-o", "width=8"]) == 2
    assert "no torchvision equivalent" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.safetensors: not a readable safetensors file"):
        backbones.read_weights(tmp_path / "bad.safetensors")


def detectron2_state_dict(detector: nn.Module) -> dict[str, torch.Tensor]:
    return detectron2_names(detector.state_dict())


@pytest.mark.parametrize("recipe,model", [("detectron2_R50_C4", "R50-C4"), ("detectron2_R50_FPN", "R50-FPN")])
def test_detectron2_names_are_the_real_ones(recipe, model):
    """The names (and shapes) the parity tests write detectron2 files with are those of detectron2's own R50
    checkpoints, read from its model builder once (tests/data/detectron2_R50_keys.json)."""
    from detection.train import DEFAULTS, OPEN_KEYS
    from engine.config import load_config

    real = json.loads((ROOT / "tests" / "data" / "detectron2_R50_keys.json").read_text())[model]["keys"]
    cfg = load_config(DEFAULTS, recipe, ["model.norm=frozen_bn"], open_keys=OPEN_KEYS)  # as imported weights have
    ours = {k: list(v.shape) for k, v in detectron2_names(build_detector(cfg, 80).state_dict()).items()}
    assert ours == real


TINY_DETECTRON2 = ["model.backbone_options.width=8", "model.min_size=[64]", "model.test_min_size=64",
                   "model.max_size=128", "model.norm=frozen_bn"]  # as the imported weights have it


@pytest.fixture
def detectron2_detector():
    from detection.train import DEFAULTS, OPEN_KEYS
    from engine.config import load_config

    cfg = load_config(DEFAULTS, "configs/detection/detectron2_R50_C4.yaml", TINY_DETECTRON2, open_keys=OPEN_KEYS)
    torch.manual_seed(0)
    detector = build_detector(cfg, 3).eval()
    with torch.no_grad():
        for name, tensor in detector.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.normal_(0, 0.1)
            elif name.startswith("roi_heads.predictor."):
                tensor.normal_(0, 5e-4)
        detector.backbone.stages.stem.conv1.weight /= 58.0  # std-1 BGR input: keep activations moderate
    return detector, cfg


def test_a_detectron2_checkpoint_loads_and_reproduces_the_known_detector(tmp_path, detectron2_detector):
    from detection.build import import_detector

    detector, cfg = detectron2_detector
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = detector([image])[0]
    assert len(expected["boxes"]) > 5
    state = detectron2_state_dict(detector)
    files = {"pkl": tmp_path / "model_final.pkl", "pth": tmp_path / "model_final.pth"}
    with open(files["pkl"], "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    torch.save({"model": state, "iteration": 90000}, files["pth"])
    for path in files.values():
        model, checkpoint = import_detector(str(path), cfg, ["a", "b", "c"])
        with torch.no_grad():
            got = model([image])[0]
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
        assert checkpoint["class_names"] == ["a", "b", "c"] and checkpoint["config"]["model"]["weights"] is None

    from detection.build import load_detector
    from tools import convert_weights

    dst = tmp_path / "imported.pth"
    assert run_cli(convert_weights.main, ["--from", "detectron2", "--src", str(files["pkl"]), "--output", str(dst),
                                          "--config", "configs/detection/detectron2_R50_C4.yaml",
                                          "--class-names", "a,b,c", *TINY_DETECTRON2]) == 0
    model, _, names = load_detector(dst)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()([image])[0]["boxes"], expected["boxes"], rtol=0, atol=1e-5)
    assert names == ["a", "b", "c"]

    wrong = copy.deepcopy(cfg)
    wrong.model.anchor_sizes = [32, 64, 128]
    with pytest.raises(UserError, match="15 anchors per position, the config 9: set model.anchor_sizes"):
        import_detector(str(files["pth"]), wrong, ["a", "b", "c"])
    with pytest.raises(UserError, match="3 classes .*give their names"):
        import_detector(str(files["pth"]), cfg)
    with pytest.raises(UserError, match="these are detectron2 weights, not timm; use --from detectron2"):
        backbones.read_weights(files["pkl"], expect="timm")


def test_class_names_taken_by_count_are_said(tmp_path, capsys):
    from detection.train import DEFAULTS, OPEN_KEYS
    from engine.config import load_config
    from engine.logs import setup_console

    cfg = load_config(DEFAULTS, "configs/detection/detectron2_R50_C4.yaml", TINY_DETECTRON2, open_keys=OPEN_KEYS)
    torch.save({"model": detectron2_names(build_detector(cfg, 20).state_dict())}, tmp_path / "voc.pth")
    setup_console()
    _, checkpoint = import_detector(str(tmp_path / "voc.pth"), cfg)
    assert checkpoint["class_names"][:2] == ["aeroplane", "bicycle"]
    assert "20 classes, named as PASCAL VOC's 20 by their count; give --class-names" in capsys.readouterr().out


def assert_same_logits(reference: nn.Module, path, arch: str, size: int) -> None:
    weights = backbones.read_weights(path, expect="timm")
    ours = backbones.build_model(weights.arch or backbones.guess_arch(weights.state_dict)).eval()
    backbones.load_weights(ours, weights, arch=arch)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


def test_timm_resnet_from_a_hub_style_safetensors_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path), metadata={"format": "pt"})  # as timm's hub files
    assert_same_logits(reference, path, "resnet18", 64)
    torch.save(timm.create_model("resnet50d", pretrained=False).state_dict(), tmp_path / "r50d.pth")
    with pytest.raises(UserError, match="r50d.pth: a timm ResNet with a deep stem"):
        backbones.read_weights(tmp_path / "r50d.pth")


@pytest.mark.slow
def test_timm_vgg16_whose_fc6_fc7_are_convolutions(tmp_path):
    timm = pytest.importorskip("timm")

    reference = timm.create_model("vgg16", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    assert backbones.read_weights(tmp_path / "pytorch_model.bin").format == "timm"
    assert_same_logits(reference, tmp_path / "pytorch_model.bin", "vgg16", 224)


def test_classification_refuses_weights_made_for_another_input_convention(msra_file):
    from classification.evaluate import check_classifier_weights

    weights = backbones.read_weights(msra_file[1])
    with pytest.raises(UserError, match="trained with stride_in_1x1=true"):
        check_classifier_weights(weights, {})
    with pytest.raises(UserError, match="R-50.pkl: these weights expect BGR input"):
        check_classifier_weights(weights, {"stride_in_1x1": True})
