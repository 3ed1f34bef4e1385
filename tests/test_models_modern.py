"""ConvNeXt and EfficientNetV2: parameter counts, MACs, the shared layers they brought (LayerNorm2d, LayerScale,
Fused-MBConv) and stochastic depth.

Counts and MACs are taken on the meta device (no arithmetic); real forwards run on small tensors. torchvision
state_dict and output parity for convnext_* and efficientnet_v2_s/m/l is in test_parity.py, the contract, small
inputs, ONNX and TorchScript in the registry-wide sweeps.

The oracles: torchvision's weights meta (num_params, "_ops" in GMACs at the crop size of its weights' transforms)
for the names torchvision has; for EfficientNetV2-B0..B3, which it has not, the official release
(google/automl, efficientnetv2/README.md, the "EffNetV2-B0..B3" table: 7.1M, 8.1M, 10.1M, 14.4M parameters and
0.72B, 1.2B, 1.7B, 3.0B FLOPs, which there are multiply-adds, at the evaluation sizes 224, 240, 260, 300 of its
effnetv2_configs.py) and that file's base table scaled by hand.
"""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import stochastic_depth

from cnnzoo.errors import UserError
from cnnzoo.layers import DropPath, FusedMBConv, LayerNorm2d, LayerScale, MBConv, SqueezeExcite, make_divisible
from cnnzoo.models.convnext import Block, ConvNeXt
from cnnzoo.models.efficientnet import EfficientNet, round_filters
from cnnzoo.registry import create_model, model_info
from cnnzoo.summary import summarize

# At 1000 classes: torchvision's meta["num_params"] for the names it has; ours (timm's tf_efficientnetv2_b*) for B0-B3.
PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "efficientnet_v2_s": 21_458_488,
    "efficientnet_v2_m": 54_139_356,
    "efficientnet_v2_l": 118_515_272,
    "efficientnet_v2_b0": 7_139_704,
    "efficientnet_v2_b1": 8_141_052,
    "efficientnet_v2_b2": 10_096_086,
    "efficientnet_v2_b3": 14_358_406,
}
TORCHVISION = [n for n in PARAMS if not n.startswith("efficientnet_v2_b")]

# The official release's README: (params in millions, GFLOPs = multiply-adds) and the evaluation size.
V2_BASE_RELEASE = {
    "efficientnet_v2_b0": (7.1, 0.72, 224),
    "efficientnet_v2_b1": (8.1, 1.2, 240),
    "efficientnet_v2_b2": (10.1, 1.7, 260),
    "efficientnet_v2_b3": (14.4, 3.0, 300),
}

# v2_base_block of effnetv2_configs.py scaled by hand with its round_filters (nearest multiple of 8) and
# round_repeats (ceil): stem, stage channels, stage depths, head.
V2_BASE_SHAPES = {
    "efficientnet_v2_b0": (32, [16, 32, 48, 96, 112, 192], [1, 2, 2, 3, 5, 8], 1280),
    "efficientnet_v2_b1": (32, [16, 32, 48, 96, 112, 192], [2, 3, 3, 4, 6, 9], 1280),
    "efficientnet_v2_b2": (32, [16, 32, 56, 104, 120, 208], [2, 3, 3, 4, 6, 10], 1408),
    "efficientnet_v2_b3": (40, [16, 40, 56, 112, 136, 232], [2, 3, 3, 5, 7, 12], 1536),
}


def _meta(builder, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return builder(*args, **kwargs)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_count(name):
    model = _meta(create_model, name)
    assert _count(model) == PARAMS[name]
    assert model.channels_last, "depthwise networks ask for channels_last"


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_meta(name):
    """Parameters, and MACs at the crop size of torchvision's weights, which is also our default input size."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    size = weights.transforms().crop_size[0]
    assert model_info(name).input_size == (3, size, size)
    model = _meta(create_model, name)
    assert _count(model) == weights.meta["num_params"]
    assert round(summarize(model, (3, size, size)).total_macs / 1e9, 3) == weights.meta["_ops"]


@pytest.mark.parametrize("name", V2_BASE_RELEASE)
def test_v2_base_against_the_release(name):
    millions, gmacs, size = V2_BASE_RELEASE[name]
    assert model_info(name).input_size == (3, size, size)
    model = _meta(create_model, name)
    assert _count(model) == pytest.approx(millions * 1e6, rel=0.02)
    assert round(_count(model) / 1e6, 1) == millions  # in fact to the README's last digit
    macs = summarize(model, (3, size, size)).total_macs / 1e9
    assert float(f"{macs:.2g}") == gmacs  # the README's two significant digits
    # ... and the network is built from the scaled table.
    stem, channels, depths, head = V2_BASE_SHAPES[name]
    assert model.features[0][0].out_channels == stem and model.num_features == head
    assert [len(model.features[i]) for i in range(1, 7)] == depths
    assert [model.features[i][-1].out_channels for i in range(1, 7)] == channels


def test_v2_width_rounding_is_the_releases():
    # The release rounds to the nearest multiple of 8 without make_divisible's "never 10% below" correction:
    # 16 x 1.2 = 19.2 stays 16 in B3's first stage, where make_divisible would give 24.
    assert round_filters(16 * 1.2) == 16 and make_divisible(16 * 1.2) == 24
    assert [round_filters(c * 1.1) for c in (32, 48, 96, 112, 192, 1280)] == [32, 56, 104, 120, 208, 1408]


def test_v2_s_is_table_4():
    model = _meta(create_model, "efficientnet_v2_s")
    # Table 4, stages 1-6: operator, SE, stride, channels, layers (stage 0 the 3x3/2 stem with 24 channels).
    table = [
        (FusedMBConv, False, 1, 24, 2),
        (FusedMBConv, False, 2, 48, 4),
        (FusedMBConv, False, 2, 64, 4),
        (MBConv, True, 2, 128, 6),
        (MBConv, True, 1, 160, 9),
        (MBConv, True, 2, 256, 15),
    ]
    stem = model.features[0][0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (2, 2), 24)
    for i, (kind, se, stride, channels, layers) in enumerate(table, start=1):
        stage = model.features[i]
        assert len(stage) == layers and all(type(b) is kind for b in stage)
        assert all(any(isinstance(m, SqueezeExcite) for m in b.modules()) == se for b in stage)
        first_conv = next(m for m in stage[0].modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
        assert first_conv.stride == (stride, stride) and stage[-1].out_channels == channels
    head = model.features[7][0]
    assert head.kernel_size == (1, 1) and head.out_channels == model.num_features == 1280
    assert model.classifier[0].p == 0.2
    # Fused-MBConv4 expands 4x in its 3x3 convolution; MBConv6 6x in its 1x1.
    assert model.features[2][1].block[0][0].out_channels == 4 * 48
    assert model.features[5][1].block[0][0].out_channels == 6 * 160


def test_fused_mbconv_structure():
    block = FusedMBConv(32, 32, 128, stride=1, kernel_size=3)
    assert block.use_res_connect and len(block.block) == 2  # kxk expansion, 1x1 linear projection
    expand, project = block.block
    assert expand[0].kernel_size == (3, 3) and expand[0].groups == 1 and isinstance(expand[2], nn.SiLU)
    assert project[0].kernel_size == (1, 1) and len(project) == 2  # conv, BN: no activation
    single = FusedMBConv(24, 24, 24, stride=1)  # expand ratio 1: one kxk convolution that keeps its activation
    assert len(single.block) == 1 and isinstance(single.block[0][2], nn.SiLU)
    strided = FusedMBConv(24, 48, 96, stride=2)
    assert not strided.use_res_connect and strided.block[0][0].stride == (2, 2)
    x = torch.randn(2, 24, 8, 8)
    assert strided.eval()(x).shape == (2, 48, 4, 4)
    with_se = FusedMBConv(16, 16, 64, se_channels=4)
    assert isinstance(with_se.block[1], SqueezeExcite) and with_se.block[1].fc1.out_channels == 4
    # The residual: in eval mode the output is the branch plus the input.
    block.eval()
    y = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(y), block.block(y) + y)


def test_layernorm2d_against_layer_norm_and_by_hand():
    torch.manual_seed(0)
    norm = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    out = norm(x)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)
    # By hand: every position normalised over its channels (biased variance), then scaled and shifted per channel.
    mean = x.mean(1, keepdim=True)
    var = ((x - mean) ** 2).mean(1, keepdim=True)
    by_hand = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, 6, 1, 1) + norm.bias.view(1, 6, 1, 1)
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-5)
    assert out.shape == x.shape and norm.eps == 1e-6 and LayerNorm2d(4).eps == 1e-6


def test_layer_scale():
    scale = LayerScale(4, init_value=1e-6)
    assert scale.gamma.shape == (4, 1, 1) and torch.all(scale.gamma == 1e-6)
    with torch.no_grad():
        scale.gamma.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]).view(4, 1, 1))
    x = torch.randn(2, 4, 3, 3)
    out = scale(x)
    for c, g in enumerate((1.0, -2.0, 0.5, 0.0)):
        torch.testing.assert_close(out[:, c], x[:, c] * g)


def test_convnext_block_against_a_functional_computation():
    torch.manual_seed(0)
    dim = 8
    block = Block(dim).eval()
    assert torch.all(block.layer_scale.gamma == 1e-6)  # the paper's initial layer scale
    with torch.no_grad():
        block.layer_scale.gamma.normal_()
        for p in block.block.parameters():
            p.normal_(0, 0.3)
    dw, _, ln, fc1, _, fc2, _ = block.block
    x = torch.randn(2, dim, 9, 9)
    with torch.no_grad():
        y = F.conv2d(x, dw.weight, dw.bias, padding=3, groups=dim).permute(0, 2, 3, 1)
        y = F.layer_norm(y, (dim,), ln.weight, ln.bias, 1e-6)
        y = F.linear(F.gelu(F.linear(y, fc1.weight, fc1.bias)), fc2.weight, fc2.bias).permute(0, 3, 1, 2)
        expected = x + block.layer_scale.gamma.view(1, dim, 1, 1) * y
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert dw.kernel_size == (7, 7) and dw.groups == dim and fc1.out_features == 4 * dim  # depthwise 7x7, 4x


def test_convnext_starts_near_identity():
    # Layer scale 1e-6: at initialisation a block passes its input through almost unchanged, though its branch is not
    # small.
    torch.manual_seed(0)
    block = Block(16).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert block.block(x).abs().max() > 0.1
        torch.testing.assert_close(block(x), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_drop_path_is_torchvisions_row_mode(p):
    """DropPath in training draws the same per-sample mask as torchvision's stochastic_depth(mode="row")."""
    x = torch.randn(64, 3, 2, 2)
    drop = DropPath(p).train()
    torch.manual_seed(1)
    ours = drop(x)
    torch.manual_seed(1)
    theirs = stochastic_depth(x, p, "row", training=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # Each sample is dropped whole or kept and scaled by 1/(1-p).
    kept = ours.flatten(1).abs().sum(1) > 0
    torch.testing.assert_close(ours[kept], x[kept] / (1 - p))
    assert 0 < int(kept.sum()) < 64
    # Identity in eval mode, and at p = 0.
    assert drop.eval()(x) is x and DropPath(0.0).train()(x) is x


def _rates(model: nn.Module, kind) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, kind)]


CONVNEXT_RATES = [("convnext_tiny", 0.1, 18), ("convnext_small", 0.4, 36), ("convnext_base", 0.5, 36),
                  ("convnext_large", 0.5, 36)]


@pytest.mark.parametrize("name, rate, blocks", CONVNEXT_RATES)
def test_convnext_drop_path_schedule(name, rate, blocks):
    """Linear from 0 at the first block to the variant's ImageNet-1K training rate (the paper's Table 5) at the
    last, as torchvision's stochastic_depth_prob."""
    rates = _rates(_meta(create_model, name), DropPath)
    assert len(rates) == blocks
    assert rates == pytest.approx([rate * i / (blocks - 1) for i in range(blocks)], abs=1e-12)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(rate)
    theirs = _rates(_meta(torchvision.models.get_model, name), torchvision.ops.StochasticDepth)
    assert rates == pytest.approx(theirs, abs=1e-12)
    # An explicit rate replaces the default; the blocks then follow the same schedule up to it.
    custom = _rates(_meta(create_model, name, drop_path_rate=0.3), DropPath)
    assert custom[-1] == pytest.approx(0.3) and custom[1] == pytest.approx(0.3 / (blocks - 1))


@pytest.mark.parametrize("name", ["efficientnet_v2_s", "efficientnet_v2_m"])
def test_efficientnet_v2_drop_path_schedule(name):
    rates = _rates(_meta(create_model, name), DropPath)
    n = len(rates)
    assert rates == pytest.approx([0.2 * i / n for i in range(n)], abs=1e-12)  # the reference code's survival 0.8
    theirs = _rates(_meta(torchvision.models.get_model, name), torchvision.ops.StochasticDepth)
    assert rates == pytest.approx(theirs, abs=1e-12)


def test_drop_path_changes_training_but_not_eval():
    torch.manual_seed(0)
    plain = ConvNeXt("tiny", num_classes=5, drop_path_rate=0.0)
    dropped = ConvNeXt("tiny", num_classes=5, drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    with torch.no_grad():  # layer scale 1e-6 would hide any dropped branch: make the branches count
        for m in (plain, dropped):
            for s in m.modules():
                if isinstance(s, LayerScale):
                    s.gamma.fill_(1.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain.eval()(x))
        assert not torch.allclose(dropped.train()(x), plain.train()(x))


def test_small_input_stems():
    convnext = _meta(create_model, "convnext_tiny", small_input=True)
    stem = convnext.features[0][0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert _meta(create_model, "convnext_tiny").features[0][0].kernel_size == (4, 4)  # the patchify stem
    x = torch.zeros(1, 3, 32, 32, device="meta")
    assert convnext.forward_features(x).shape[-2:] == (4, 4)  # 8x downsampling
    v2 = _meta(create_model, "efficientnet_v2_s", small_input=True)
    assert v2.features[0][0].stride == (1, 1) and v2.forward_features(x).shape[-2:] == (2, 2)  # 16x


def test_bad_arguments():
    with pytest.raises(UserError, match="variants"):
        ConvNeXt("huge")
    with pytest.raises(UserError, match="drop_path_rate"):
        ConvNeXt("tiny", drop_path_rate=1.0)
    with pytest.raises(UserError, match="variants"):
        EfficientNet("v2_xl")


def test_v2_batchnorm_and_heads():
    # The V2 reference code's BN: eps 1e-3, momentum 0.9 in TensorFlow's convention (0.1 in PyTorch's), as torchvision.
    model = _meta(create_model, "efficientnet_v2_m")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.1 for m in bns)
    dropout = [_meta(create_model, f"efficientnet_v2_{v}").classifier[0].p for v in "sml"]
    assert dropout == [0.2, 0.3, 0.4]  # the release's efficientnetv2_params, torchvision's defaults
    assert math.isclose(_meta(create_model, "efficientnet_v2_b3").classifier[0].p, 0.3)


TF_V2 = ["s", "m", "l", "b0", "b1", "b2", "b3"]


@pytest.mark.parametrize("variant", TF_V2)
def test_tf_efficientnetv2_counts_timms_parameters(variant):
    """Google's TensorFlow release of V2 as timm ports it: the same tensors as timm's tf_efficientnetv2_*, at 1000
    classes, with its BN eps, its "SAME" padding on the same convolutions and its default input size."""
    timm = pytest.importorskip("timm")
    name = f"tf_efficientnetv2_{variant}"
    with torch.device("meta"):
        theirs = timm.create_model(name, pretrained=False)
        ours = create_model(name)
    assert _count(ours) == _count(theirs)
    assert ours.num_features == theirs.num_features
    assert {m.eps for m in ours.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert {m.eps for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    # timm: Conv2dSame where the padding depends on the input size (the stem and the four stride-2 stages)
    shapes = [(m.in_channels, m.out_channels, m.stride) for m in ours.modules() if type(m).__name__ == "Conv2dSame"]
    assert shapes == [(m.in_channels, m.out_channels, m.stride) for m in theirs.modules()
                      if type(m).__name__ == "Conv2dSame"]
    assert len(shapes) == 5
    assert model_info(name).input_size == (3, *theirs.pretrained_cfg["input_size"][1:])
    info, v2 = model_info(name), model_info(f"efficientnet_v2_{variant}")
    assert (info.family, info.paper) == (v2.family, v2.paper)
