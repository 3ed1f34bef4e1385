"""The residual family: exact parameter counts, the papers' CIFAR sizes, shortcuts A/B/C, stochastic depth, the
v1 and v1.5 strides, small inputs, grouped convolutions, TorchScript (torchvision layout: tests/test_parity.py)."""

from functools import cache

import pytest
import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import DropPath
from cnnzoo.models.resnet import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    PadShortcut,
    PreActBlock,
    PreActBottleneck,
    Projection,
    SENET154,
    ResNet,
    SENetBottleneck,
)
from cnnzoo.registry import create_model, list_models, model_info

FAMILIES = {"ResNet", "Pre-activation ResNet", "Wide ResNet", "ResNeXt", "SENet"}

# At each model's default class count: 1000 for the ImageNet networks (the torchvision names are torchvision's
# counts, the SE networks timm's), 10 for the CIFAR networks.
GOLDEN = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet50_v1": 25_557_032,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "preact_resnet18": 11_687_720,
    "preact_resnet34": 21_795_880,
    "preact_resnet50": 25_549_352,
    "preact_resnet164": 1_703_258,
    "preact_resnet1001": 10_327_706,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "wrn16_4": 2_748_890,
    "wrn28_10": 36_479_194,
    "wrn40_4": 8_949_210,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "resnext29_8x64d": 34_426_698,
    "resnext29_16x64d": 68_155_210,
    "se_resnet18": 11_779_624,
    "se_resnet34": 21_960_416,
    "se_resnet50": 28_088_024,
    "se_resnet101": 49_326_872,
    "se_resnet152": 66_821_848,
    "se_resnext50_32x4d": 27_559_896,
    "senet154": 115_088_984,
    # timm's legacy_se* (the SE paper's released layout)
    "legacy_se_resnet18": 11_778_592,
    "legacy_se_resnet34": 21_958_868,
    "legacy_se_resnet50": 28_088_024,
    "legacy_se_resnet101": 49_326_872,
    "legacy_se_resnet152": 66_821_848,
    "legacy_se_resnext50_32x4d": 27_559_896,
    "legacy_se_resnext101_32x4d": 48_955_416,
    "legacy_senet154": 115_088_984,
}

# Millions of parameters as the papers print them: He et al. 2015 Table 6 and sec. 4.2, He et al. 2016 Table 3,
# Zagoruyko & Komodakis Table 4, Xie et al. Table 7.
PAPER_MILLIONS = {
    "resnet20": 0.27,
    "resnet32": 0.46,
    "resnet44": 0.66,
    "resnet56": 0.85,
    "resnet1202": 19.4,
    "preact_resnet164": 1.7,
    "wrn28_10": 36.5,
    "wrn40_4": 8.9,
    "resnext29_8x64d": 34.4,
    "resnext29_16x64d": 68.1,
}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@cache
def _meta_default(name: str) -> nn.Module:
    """One meta-device build per network, shared by the tests that only read it. Stochastic depth is on: it adds
    no parameters, and every residual network must accept it."""
    return _meta(name, drop_path_rate=0.2)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_residual_model_has_a_golden_count():
    assert {n for n in list_models() if model_info(n).family in FAMILIES} == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_parameter_count_and_stochastic_depth(name):
    model = _meta_default(name)  # built with drop_path_rate=0.2
    assert _count(model) == GOLDEN[name]
    # Huang et al. 2016, eq. 4: block l of L drops with probability 0.2 * l / L
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.2 * (i + 1) / len(rates) for i in range(len(rates))])


@pytest.mark.parametrize("name", sorted(PAPER_MILLIONS))
def test_cifar_counts_within_one_percent_of_the_papers(name):
    assert _count(_meta_default(name)) == pytest.approx(PAPER_MILLIONS[name] * 1e6, rel=0.01)


def test_cifar_counts_the_papers_round():
    # ResNet-110 has 1.73M parameters; He et al. print two digits, 1.7M (1.6% below).
    assert round(GOLDEN["resnet110"] / 1e6, 1) == 1.7
    # Pre-activation ResNet-1001 has 10.33M parameters in all and 10.18M without the BN scales and shifts; the
    # paper's 10.2M is the latter (its 1.7M for ResNet-164 holds either way).
    model = _meta_default("preact_resnet1001")
    bn = sum(_count(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (GOLDEN["preact_resnet1001"] - bn) / 1e6 == pytest.approx(10.2, rel=0.01)


def test_shortcut_a_has_no_parameters():
    model = create_model("resnet20")
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(pads) == 2 and not any(isinstance(m, Projection) for m in model.modules())
    assert all(_count(pad) == 0 for pad in pads)
    x = torch.randn(1, 16, 32, 32)
    y = pads[0](x)  # stride-2 subsampling, 16 zero channels appended
    assert y.shape == (1, 32, 16, 16) and torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    # ImageNet ResNet-18 under option A: option B's count less its three projections (1x1 conv + BN)
    projections = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))
    assert _count(_meta("resnet18", shortcut="A")) == GOLDEN["resnet18"] - projections


def test_shortcut_c_projects_everywhere():
    model = _meta("resnet50", shortcut="C")
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(isinstance(b.downsample, Projection) for b in blocks)
    assert _count(model) > GOLDEN["resnet50"]


def test_drop_path_is_identity_in_eval_and_changes_training_outputs():
    torch.manual_seed(0)
    plain = create_model("resnet20")
    dropped = create_model("resnet20", drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain.eval()(x))
        assert not torch.allclose(dropped.train()(x), plain.train()(x))


def test_preact_identity_shortcut_passes_x_unchanged():
    block = PreActBlock(16, 16).eval()
    nn.init.zeros_(block.conv2.weight)  # residual branch is zero: out = x exactly (He et al. 2016, eq. 4)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    model = _meta_default("preact_resnet164")
    assert isinstance(model.layer3.norm, nn.BatchNorm2d)  # the BN-ReLU after the last addition


def test_resnet50_v1_strides_the_first_1x1():
    v1, v15 = _meta_default("resnet50_v1"), _meta_default("resnet50")
    for stage in ("layer2", "layer3", "layer4"):
        b1, b15 = v1.get_submodule(stage)[0], v15.get_submodule(stage)[0]
        assert (b1.conv1.stride, b1.conv2.stride) == ((2, 2), (1, 1))
        assert (b15.conv1.stride, b15.conv2.stride) == ((1, 1), (2, 2))


def test_small_input_resnet18_ends_at_4x4():
    model = create_model("resnet18", num_classes=10, small_input=True).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    with torch.inference_mode():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_resnext_grouped_convolutions():
    convs = [m.conv2 for m in _meta_default("resnext50_32x4d").modules() if isinstance(m, Bottleneck)]
    assert len(convs) == 16 and all(c.groups == 32 for c in convs)
    assert [convs[i].out_channels for i in (0, 3, 7, 13)] == [128, 256, 512, 1024]  # 32 x 4d, doubling per stage
    assert {m.conv2.groups for m in _meta_default("resnext29_8x64d").modules() if isinstance(m, Bottleneck)} == {8}
    senet = [m for m in _meta_default("senet154").modules() if isinstance(m, SENetBottleneck)]
    assert all(b.conv2.groups == 64 and b.conv1.out_channels * 2 == b.conv2.out_channels for b in senet)


def test_wrn_dropout_between_the_convolutions():
    model = _meta("wrn16_4", block_dropout=0.3)
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 6 and all(isinstance(b.dropout, nn.Dropout) and b.dropout.p == 0.3 for b in blocks)


SCRIPTED = {
    "basic, option A": lambda: create_model("resnet20", drop_path_rate=0.1),
    "preact bottleneck, SE, option C": lambda: CifarResNet(
        PreActBottleneck, [1, 1, 1], shortcut="C", se=True, block_dropout=0.1, drop_path_rate=0.1
    ),
    "SENet-154 block, deep stem": lambda: ResNet(
        SENetBottleneck, [1, 1, 1, 1], **SENET154, small_input=True, drop_path_rate=0.1
    ),
}


@pytest.mark.parametrize("build", SCRIPTED.values(), ids=SCRIPTED.keys())
def test_torchscript(build):
    torch.manual_seed(0)
    model = build().eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="shortcut"):
        create_model("resnet18", shortcut="D")
    with pytest.raises(UserError, match="drop_path_rate"):
        create_model("resnet20", drop_path_rate=1.0)
    with pytest.raises(UserError, match="stem"):
        ResNet(Bottleneck, [1, 1, 1, 1], stem="5x5")
    with pytest.raises(UserError, match="groups"):
        ResNet(BasicBlock, [1, 1, 1, 1], groups=32)
