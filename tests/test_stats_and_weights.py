"""Parameter/FLOP counts against the paper, weight files read safely, the model_stats tool."""

import json

import pytest
import torch
import torchvision

import backbones
from engine.cli import run_cli
from engine.errors import UserError
from tests.helpers import write_poisoned_pickle
from tools import model_stats

PAPER_NAMES = [n for n in backbones.list_models() if backbones.model_info(n).paper and n != "cifar_resnet1202"]


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_counts_within_3_percent_of_the_paper(name):
    (row,) = backbones.paper_table([name])
    for key in ("macs", "params"):
        if f"paper_{key}" in row:
            assert abs(row[f"{key}_rel_diff"]) <= 0.03, row


def test_counts_match_an_independent_reference():
    # torchvision's published figures for resnet50 (v1.5 layout): 25,557,032 parameters, 4.09 GFLOPS
    # (multiply-adds); the paper's 3.8e9 is the v1 layout with the stride in the 1x1.
    v15 = backbones.model_stats("resnet50")
    assert v15["params"] == sum(p.numel() for p in torchvision.models.resnet50().parameters()) == 25_557_032
    assert round(v15["macs"] / 1e9, 2) == 4.09
    assert backbones.model_stats("resnet50", stride_in_1x1=True)["macs"] < v15["macs"]


def test_cifar_resnet20_parameters_counted_by_hand():
    def conv(cin, cout):  # 3x3 conv without bias, then BN (scale + shift)
        return cin * cout * 9 + 2 * cout

    stage1 = 3 * 2 * conv(16, 16)
    stage2 = conv(16, 32) + conv(32, 32) + 2 * 2 * conv(32, 32)  # option A: parameter-free shortcuts
    stage3 = conv(32, 64) + conv(64, 64) + 2 * 2 * conv(64, 64)
    by_hand = conv(3, 16) + stage1 + stage2 + stage3 + 64 * 10 + 10
    assert backbones.model_stats("cifar_resnet20")["params"] == by_hand == 269_722


def test_conv_multiply_adds_scale_with_image_area():
    fc = sum(m.weight.numel() for m in torchvision.models.vgg16().modules() if isinstance(m, torch.nn.Linear))
    small = backbones.model_stats("vgg16", input_size=112)["macs"]
    large = backbones.model_stats("vgg16", input_size=224)["macs"]
    assert small - fc == (large - fc) // 4  # every map halves in both sides; the fc layers do not change


def test_read_weights_handles_our_checkpoints_ddp_prefix_and_bad_files(tmp_path):
    model = backbones.build_model("cifar_resnet20", width=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"arch": "cifar_resnet20", "options": {"width": 4},
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    weights = backbones.read_weights(path)
    assert weights.arch == "cifar_resnet20" and weights.options == {"width": 4}
    fresh = backbones.build_model("cifar_resnet20", width=4)
    backbones.load_weights(fresh, weights, arch="cifar_resnet20")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"corrupt\.pth: not a readable"):
        backbones.read_weights(corrupt)
    with pytest.raises(UserError, match="missing.pth: weight file not found"):
        backbones.read_weights(tmp_path / "missing.pth")
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(UserError, match="does not contain a state dict"):
        backbones.read_weights(not_weights)


def test_a_poisoned_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    write_poisoned_pickle(path, lambda payload: {"state_dict": {"w": payload}}, tmp_path / "pwned")
    with pytest.raises(UserError, match="evil.pth"):
        backbones.read_weights(path)
    assert not (tmp_path / "pwned").exists()


def test_backbone_from_a_classification_checkpoint_drops_the_classifier(tmp_path):
    model = backbones.build_model("resnet18", num_classes=5, width=8)
    path = tmp_path / "model_final.pth"
    torch.save({"arch": "resnet18", "options": {"width": 8}, "state_dict": model.state_dict()}, path)
    backbone = backbones.build_backbone("resnet18", ["res4"], weights=path, width=8)
    assert torch.equal(backbone.stages["res3"][0].conv1.weight, model.layer2[0].conv1.weight)
    with pytest.raises(UserError, match=r"of resnet18 do not fit resnet34 \(for these weights use --arch resnet18\)"):
        backbones.build_backbone("resnet34", weights=path, width=8)


def test_model_stats_cli(capsys):
    assert run_cli(model_stats.main, ["--arch", "resnet50", "-o", "stride_in_1x1=true", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["arch"] == "resnet50" and isinstance(stats["params"], int) and stats["macs"] > 3.8e9
    assert stats["options"] == {"stride_in_1x1": True}

    assert run_cli(model_stats.main, ["--arch", "resnet5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'resnet5'") and err.count("\n") == 1
    assert run_cli(model_stats.main, ["--arch", "resnet18", "-o", "shortcut"]) == 2
    assert "key=value" in capsys.readouterr().err
    with pytest.raises(UserError):
        run_cli(model_stats.main, ["--arch", "resnet5", "--debug"])


def test_model_stats_table_lists_every_model_beside_the_paper(capsys):
    rows = backbones.paper_table(["resnet152", "vgg19", "cifar_resnet110"])
    text = model_stats.format_table(rows)
    assert "resnet152" in text and "11.30G" in text and "1.70M" in text
