"""The efficient families: MobileNet V1-V3, ShuffleNet V1/V2, EfficientNet B0-B7.

Parameter counts and MACs are taken on the meta device (no arithmetic); real forwards run at 32x32 or 64x64.
torchvision state_dict and output parity for the shared names is in test_parity.py.
"""

import pytest
import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import InvertedResidual, channel_shuffle, make_divisible
from cnnzoo.models.efficientnet import B0_HEAD, B0_STEM, SCALING, EfficientNet, scale_stages
from cnnzoo.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from cnnzoo.registry import create_model, model_info
from cnnzoo.summary import summarize

# At 1000 classes. mobilenet_v1 is timm's mobilenetv1_100; the torchvision names equal torchvision's meta.
PARAMS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v1_075": 2_585_560,
    "mobilenet_v1_050": 1_331_592,
    "mobilenet_v1_025": 470_072,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "shufflenet_v1_g1": 1_531_936,
    "shufflenet_v1_g2": 1_733_848,
    "shufflenet_v1_g3": 1_865_728,
    "shufflenet_v1_g4": 1_968_344,
    "shufflenet_v1_g8": 2_434_768,
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}

# The reference implementation's B1-B7 (stem, stage channels, stage depths, head), which compound scaling of
# B0's Table 1 must reproduce.
EFFICIENTNET_SHAPES = {
    "b0": (32, [16, 24, 40, 80, 112, 192, 320], [1, 2, 2, 3, 3, 4, 1], 1280),
    "b1": (32, [16, 24, 40, 80, 112, 192, 320], [2, 3, 3, 4, 4, 5, 2], 1280),
    "b2": (32, [16, 24, 48, 88, 120, 208, 352], [2, 3, 3, 4, 4, 5, 2], 1408),
    "b3": (40, [24, 32, 48, 96, 136, 232, 384], [2, 3, 3, 5, 5, 6, 2], 1536),
    "b4": (48, [24, 32, 56, 112, 160, 272, 448], [2, 4, 4, 6, 6, 8, 2], 1792),
    "b5": (48, [24, 40, 64, 128, 176, 304, 512], [3, 5, 5, 7, 7, 9, 3], 2048),
    "b6": (56, [32, 40, 72, 144, 200, 344, 576], [3, 6, 6, 8, 8, 11, 3], 2304),
    "b7": (64, [32, 48, 80, 160, 224, 384, 640], [4, 7, 7, 10, 10, 13, 4], 2560),
}

# torchvision's meta["_ops"] (GMACs) at its weights' crop size (B2's is 288, not the paper's 260).
TORCHVISION_GMACS = {
    "mobilenet_v2": (224, 0.301),
    "mobilenet_v3_large": (224, 0.217),
    "mobilenet_v3_small": (224, 0.057),
    "shufflenet_v2_x0_5": (224, 0.040),
    "shufflenet_v2_x1_0": (224, 0.145),
    "shufflenet_v2_x1_5": (224, 0.296),
    "shufflenet_v2_x2_0": (224, 0.583),
    "efficientnet_b0": (224, 0.386),
    "efficientnet_b1": (240, 0.687),
    "efficientnet_b2": (288, 1.088),
    "efficientnet_b3": (300, 1.827),
    "efficientnet_b4": (380, 4.394),
    "efficientnet_b5": (456, 10.266),
    "efficientnet_b6": (528, 19.068),
    "efficientnet_b7": (600, 37.746),
}

# ShuffleNet V1, Table 1: complexity in MFLOPs (the paper counts multiply-adds) at 224x224, 1x.
SHUFFLENET_V1_MMACS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}

FAMILY_REFERENCES = [
    "mobilenet_v1_025",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v1_g3",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
]


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_count(name):
    model = _meta(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.channels_last, "depthwise networks ask for channels_last"


def test_efficientnet_input_sizes():
    sizes = [model_info(f"efficientnet_b{i}").input_size for i in range(8)]
    assert sizes == [(3, s, s) for s in (224, 240, 260, 300, 380, 456, 528, 600)]


@pytest.mark.parametrize("variant", EFFICIENTNET_SHAPES)
def test_compound_scaling(variant):
    stem, channels, depths, head = EFFICIENTNET_SHAPES[variant]
    scaling = SCALING[variant]
    stages = scale_stages(scaling)
    assert [s.channels for s in stages] == channels and [s.layers for s in stages] == depths
    assert make_divisible(B0_STEM * scaling.width) == stem and make_divisible(B0_HEAD * scaling.width) == head
    # ... and the network is built from exactly that.
    model = _meta(f"efficientnet_{variant}")
    assert model.features[0][0].out_channels == stem and model.num_features == head
    assert [len(model.features[i]) for i in range(1, 8)] == depths
    assert [model.features[i][-1].out_channels for i in range(1, 8)] == channels


def test_depthwise_and_grouped_macs():
    # A lone depthwise 3x3 over C channels at HxW costs 9*C*H*W.
    c, h, w = 32, 20, 24
    summary = summarize(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), (c, h, w))
    assert summary.total_macs == 9 * c * h * w
    # In whole networks: every depthwise conv costs k*k*C*H*W and every grouped 1x1 C_in/g * C_out * H*W.
    checked = 0
    for name in ("mobilenet_v2", "shufflenet_v1_g3", "efficientnet_b0"):
        model = _meta(name)
        for row in summarize(model, (3, 224, 224)).rows:
            layer = model.get_submodule(row.name)
            if isinstance(layer, nn.Conv2d) and layer.groups > 1:
                out_c, out_h, out_w = row.out_shape
                k = layer.kernel_size[0] * layer.kernel_size[1]
                assert row.macs == k * layer.in_channels // layer.groups * out_c * out_h * out_w, row.name
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("name", TORCHVISION_GMACS)
def test_macs_match_torchvision(name):
    size, gmacs = TORCHVISION_GMACS[name]
    assert round(summarize(_meta(name), (3, size, size)).total_macs / 1e9, 3) == gmacs


@pytest.mark.parametrize("groups", SHUFFLENET_V1_MMACS)
def test_shufflenet_v1_complexity(groups):
    model = _meta(f"shufflenet_v1_g{groups}")
    assert abs(summarize(model, (3, 224, 224)).total_macs / 1e6 - SHUFFLENET_V1_MMACS[groups]) < 2.5
    # Table 1's output channels: Stage 2, 3, 4.
    widths = [model.get_submodule(f"stage{i}")[-1].branch[-1][0].out_channels for i in (2, 3, 4)]
    assert widths == {1: [144, 288, 576], 2: [200, 400, 800], 3: [240, 480, 960], 4: [272, 544, 1088],
                      8: [384, 768, 1536]}[groups]


def test_shufflenet_v1_scale():
    # "ShuffleNet s x" scales the number of filters by s; at g=3 the same widths as the authors' code.
    for scale, final in ((0.5, 480), (1.5, 1440), (2.0, 1920)):
        assert _meta("shufflenet_v1_g3", scale=scale).num_features == final
    with pytest.raises(UserError, match="groups"):
        ShuffleNetV1(groups=5)
    with pytest.raises(UserError, match="scale"):
        ShuffleNetV2(scale=3.0)
    with pytest.raises(UserError, match="variants"):
        EfficientNet("b9")


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    out = channel_shuffle(x, 3).flatten().tolist()
    # groups (0..3), (4..7), (8..11) -> one channel from each group in turn
    assert out == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert sorted(out) == list(range(12))
    # shuffling with the transposed grouping undoes it
    assert torch.equal(channel_shuffle(channel_shuffle(x, 3), 4), x)


def test_inverted_residual_structure():
    block = InvertedResidual(16, 16, 96, stride=1, kernel_size=5, se_channels=4)
    assert block.use_res_connect and len(block.block) == 4  # expand, depthwise, SE, project
    assert block.block[1][0].groups == 96 and block.block[1][0].kernel_size == (5, 5)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in block.block[-1])  # linear bottleneck
    narrow = InvertedResidual(16, 24, 16, stride=2)
    assert not narrow.use_res_connect and len(narrow.block) == 2  # expand ratio 1: no expansion


@pytest.mark.parametrize("name", FAMILY_REFERENCES)
def test_small_input_and_torchscript(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, small_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        features = model.forward_features(x)
        out = model(x)
    # stride-1 stem: 32x32 ends at 2x2 (16x downsampling) or 4x4 (ShuffleNet, no stem pool: 8x)
    assert features.shape[-1] == (4 if name.startswith("shufflenet") else 2) and out.shape == (2, 10)
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), out)


@pytest.mark.parametrize("variant", range(8))
def test_tf_efficientnet_counts_timms_parameters(variant):
    """Google's TensorFlow release as timm ports it: the same tensors as timm's tf_efficientnet_bN, at 1000 classes."""
    timm = pytest.importorskip("timm")
    name = f"tf_efficientnet_b{variant}"
    with torch.device("meta"):
        theirs = timm.create_model(name, pretrained=False)
        ours = create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # What the tensors cannot show, against timm's modules: TensorFlow's BN eps, and "SAME" padding on the stride-2
    # convolutions (timm: Conv2dSame where the padding depends on the input size, symmetric elsewhere).
    assert {m.eps for m in ours.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert {m.eps for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    same = [m for m in ours.modules() if type(m).__name__ == "Conv2dSame"]
    assert len(same) == sum(type(m).__name__ == "Conv2dSame" for m in theirs.modules()) == 5
    assert model_info(name).input_size == (3, *theirs.pretrained_cfg["input_size"][1:])
