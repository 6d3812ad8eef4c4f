"""The registry's networks: torchvision parity, shapes and strides, shortcut options, freezing."""

import pytest
import torch
import torchvision
from torch import nn

import backbones
from backbones import FrozenBatchNorm2d, ZeroPadShortcut
from backbones.cifar import CifarResNet
from backbones.resnet import BasicBlock, Bottleneck
from engine.errors import UserError

TORCHVISION_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19"]


def _randomise_bn_stats(model: nn.Module) -> None:
    """Give every BN non-trivial running statistics so eval-mode parity tests more than the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_strictly_and_gives_same_logits(name):
    reference = getattr(torchvision.models, name)(weights=None)
    _randomise_bn_stats(reference)
    ours = backbones.build_model(name)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference.eval()(x), ours.eval()(x)
    assert expected.abs().max() > 1e-3  # the comparison is not between two zero tensors
    assert (got - expected).abs().max().item() <= 1e-5


def test_torchvision_guess_and_mismatch_message_names_keys_and_architectures():
    state = torchvision.models.resnet50(weights=None).state_dict()
    assert backbones.guess_arch(state) == "resnet50"
    assert backbones.guess_arch(torchvision.models.vgg19(weights=None).state_dict()) == "vgg19"
    with pytest.raises(UserError) as err:
        backbones.load_weights(backbones.build_model("resnet18"), state, arch="resnet18")
    message = str(err.value)
    assert "resnet50" in message and "resnet18" in message
    assert "missing keys" not in message  # resnet18's keys are a subset of resnet50's, but shapes differ
    assert "165 unexpected keys (layer1.0.bn3.bias" in message
    assert "shape mismatches" in message and "fc.weight (1000, 2048) vs (1000, 512)" in message


SMALL = {"width": 8}


@pytest.mark.parametrize("name", backbones.list_models())
def test_every_model_classifies_and_its_stages_have_the_declared_shapes(name):
    info = backbones.model_info(name)
    options = {"vgg": {"width": 4, "hidden": 16}, "cifar_resnet": {"width": 4}, "cifar_plain": {"width": 4}}.get(
        info.family, SMALL)
    if name == "cifar_resnet1202":
        options = {"width": 2}
    model = backbones.build_model(name, num_classes=7, **options).eval()
    size = 64 if info.input_size == 224 else 32
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        features = backbones.backbone_from_model(model, [s.name for s in model.stages()])(x)
    for stage in model.stages():
        assert features[stage.name].shape == (2, stage.channels, size // stage.stride, size // stage.stride)


def test_imagenet_resnet_stage_names_strides_and_widths():
    backbone = backbones.build_backbone("resnet50", ["stem", "res2", "res3", "res4", "res5"])
    shapes = backbone.output_shape()
    assert {k: tuple(v) for k, v in shapes.items()} == {
        "stem": (64, 4), "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}
    vgg = backbones.build_backbone("vgg16", ["conv5_3"], width=8, hidden=16)
    assert tuple(vgg.output_shape()["conv5_3"]) == (64, 16)
    assert backbones.build_backbone("resnet18", ["res5"]).output_shape()["res5"].channels == 512


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def test_shortcut_options():
    a = backbones.build_model("resnet34", shortcut="A", width=8)
    b = backbones.build_model("resnet34", shortcut="B", width=8)
    c = backbones.build_model("resnet34", shortcut="C", width=8)
    assert all(isinstance(blk.downsample, (ZeroPadShortcut, type(None))) for blk in _blocks(a))
    assert sum(p.numel() for blk in _blocks(a) if blk.downsample for p in blk.downsample.parameters()) == 0
    assert sum(blk.downsample is not None for blk in _blocks(b)) == 3  # where dimensions increase
    assert all(isinstance(blk.downsample[0], nn.Conv2d) for blk in _blocks(c))  # one projection per block
    assert len(_blocks(c)) == 16
    n_a, n_b, n_c = (sum(p.numel() for p in m.parameters()) for m in (a, b, c))
    assert n_a < n_b < n_c
    plain = backbones.build_model("plain34", width=8)
    assert all(blk.downsample is None and not blk.residual for blk in _blocks(plain))


def test_zero_padding_shortcut_subsamples_and_pads():
    x = torch.randn(2, 4, 6, 6)
    y = ZeroPadShortcut(4, 10, stride=2)(x)
    assert y.shape == (2, 10, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()


def test_stride_in_1x1_moves_the_stride():
    default = backbones.build_model("resnet50", width=8).layer2[0]
    msra = backbones.build_model("resnet50", width=8, stride_in_1x1=True).layer2[0]
    assert (default.conv1.stride, default.conv2.stride) == ((1, 1), (2, 2))
    assert (msra.conv1.stride, msra.conv2.stride) == ((2, 2), (1, 1))


def test_zero_init_residual_zeroes_each_block_last_bn():
    model = backbones.build_model("resnet50", width=8, zero_init_residual=True)
    assert all(not blk.bn3.weight.any() and blk.bn2.weight.all() for blk in _blocks(model))


def test_frozen_batchnorm_equals_batchnorm_in_eval_and_never_changes():
    bn = nn.BatchNorm2d(5)
    _randomise_bn_stats(bn)
    bn.bias.data.normal_()
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(frozen(x), bn.eval()(x), rtol=1e-6, atol=1e-6)
    assert list(frozen.parameters()) == []
    frozen.load_state_dict(bn.state_dict())  # BN's keys (num_batches_tracked included) load as they are

    backbone = backbones.build_backbone("resnet18", ["res4"], norm="frozen_bn", width=8).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone(torch.randn(2, 3, 64, 64))["res4"].square().mean().backward()
    opt.step()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "bn" in k or "downsample.1" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "conv" in k)


def test_freeze_at_stops_gradients_and_statistics_of_the_first_stages():
    backbone = backbones.build_backbone("resnet18", ["res4"], freeze_at=2, width=8).train()
    frozen_stats = backbone.stages["res2"][0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))["res4"].sum().backward()
    for name, stage in backbone.stages.items():
        grads = [p.grad for p in stage.parameters()]
        if name in ("stem", "res2"):
            assert all(not p.requires_grad for p in stage.parameters())
            assert not any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
            assert any(isinstance(m, FrozenBatchNorm2d) for m in stage.modules())
        else:
            assert grads and all(g is not None for g in grads)
    assert torch.equal(backbone.stages["res2"][0].bn1.running_mean, frozen_stats)
    assert isinstance(backbone.stages["res3"][0].bn1, nn.BatchNorm2d)


def test_c4_split_trunk_at_stride_16_and_res5_head_per_region():
    model = backbones.build_model("resnet101", width=8)
    trunk, head, head_shape = backbones.split_model(model, "res4", freeze_at=2, norm="frozen_bn")
    feats = trunk(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["res4"] and feats["res4"].shape == (1, 32 * 4, 4, 4)
    assert trunk.output_shape()["res4"].stride == 16
    regions = head(torch.randn(5, 32 * 4, 14, 14))  # e.g. 14x14 RoI features -> res5 with stride 2
    assert regions.shape == (5, 64 * 4, 7, 7) and head_shape.channels == 64 * 4
    assert next(iter(head.state_dict())).startswith("0.conv1")  # res5 itself, blocks 0..2
    with pytest.raises(UserError, match="split points"):
        backbones.split_model(model, "res5")


def test_unknown_names_and_options_list_what_is_valid():
    with pytest.raises(UserError, match="valid names: .*resnet101"):
        backbones.build_model("resnet100")
    with pytest.raises(UserError, match="valid options .*shortcut='B'.*stride_in_1x1"):
        backbones.build_model("resnet50", shortcuts="A")
    with pytest.raises(UserError, match="unknown option.*shortcut"):  # plain nets have no shortcut
        backbones.build_model("plain18", shortcut="A")
    with pytest.raises(UserError, match="width must be positive"):
        backbones.build_model("resnet18", width=0)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)
    with pytest.raises(UserError, match="this network has stem, res2"):
        backbones.build_backbone("resnet18", ["res6"])
