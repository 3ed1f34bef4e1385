"""The compact families: SqueezeNet 1.0/1.1, MnasNet 0.5-1.3, RegNetX/RegNetY 400MF-128GF.

Parameter counts, widths and MACs are taken on the meta device (no weights, no arithmetic; regnet_y_128gf has 645M
parameters and never leaves it here). torchvision's state_dict layout and output parity for every shared name are in
test_parity.py; the ONNX and TorchScript sweeps in test_export.py.
"""

import pytest
import torch
import torchvision
import torchvision.models.regnet as tv_regnet
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import SqueezeExcite
from cnnzoo.models.mnasnet import BN_MOMENTUM, MBConvBlock, round_depth, stage_depths
from cnnzoo.models.regnet import REGNETS, RegNetBlock, RegNetRow, regnet_stages
from cnnzoo.models.squeezenet import Fire
from cnnzoo.registry import create_model, list_models
from cnnzoo.summary import summarize

# At 1000 classes: torchvision's figures (its weights' meta "num_params", checked below).
PARAMS = {
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mnasnet0_5": 2_218_512,
    "mnasnet0_75": 3_170_208,
    "mnasnet1_0": 4_383_312,
    "mnasnet1_3": 6_282_256,
    "regnet_x_400mf": 5_495_976,
    "regnet_x_800mf": 7_259_656,
    "regnet_x_1_6gf": 9_190_136,
    "regnet_x_3_2gf": 15_296_552,
    "regnet_x_8gf": 39_572_648,
    "regnet_x_16gf": 54_278_536,
    "regnet_x_32gf": 107_811_560,
    "regnet_y_400mf": 4_344_144,
    "regnet_y_800mf": 6_432_512,
    "regnet_y_1_6gf": 11_202_430,
    "regnet_y_3_2gf": 19_436_338,
    "regnet_y_8gf": 39_381_472,
    "regnet_y_16gf": 83_590_140,
    "regnet_y_32gf": 145_046_770,
    "regnet_y_128gf": 644_812_894,
}
NAMES = list(PARAMS)
REGNET_NAMES = [n for n in NAMES if n.startswith("regnet")]


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _weights(name: str) -> list:
    return list(torchvision.models.get_model_weights(name))


def test_every_torchvision_name_is_registered():
    theirs = {n for n in torchvision.models.list_models(module=torchvision.models)
              if n.startswith(("squeezenet", "mnasnet", "regnet"))}
    assert theirs == set(NAMES) and set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    assert _count(_meta(name)) == PARAMS[name]
    assert {w.meta["num_params"] for w in _weights(name)} == {PARAMS[name]}


@pytest.mark.parametrize(
    "name, size, gmacs",
    sorted({(n, w.transforms().crop_size[0], w.meta["_ops"]) for n in NAMES for w in _weights(n)}),
)
def test_macs_match_torchvision(name, size, gmacs):
    """torchvision's meta "_ops" (GFLOPS in its docs, multiply-accumulates in fact) at each weight's crop size:
    224, and 384 for the SWAG RegNetY-16GF/32GF/128GF weights."""
    assert round(summarize(_meta(name), (3, size, size)).total_macs / 1e9, 3) == gmacs


# ------------------------------------------------------------------------------------------------------------
# SqueezeNet
# ------------------------------------------------------------------------------------------------------------

# Table 1 at the paper's 227x227 input: output (C, H, W) and "# parameter before pruning" of conv1, fire2-9, conv10.
SQUEEZENET_TABLE_1 = [
    ((96, 111, 111), 14_208),
    ((128, 55, 55), 11_920),
    ((128, 55, 55), 12_432),
    ((256, 55, 55), 45_344),
    ((256, 27, 27), 49_440),
    ((384, 27, 27), 104_880),
    ((384, 27, 27), 111_024),
    ((512, 27, 27), 188_992),
    ((512, 13, 13), 197_184),
    ((1000, 13, 13), 513_000),
]


def test_squeezenet_1_0_is_table_1():
    model = _meta("squeezenet1_0")
    x, rows = torch.zeros(1, 3, 227, 227, device="meta"), []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, (Fire, nn.Conv2d)):
            rows.append((tuple(x.shape[1:]), _count(layer)))
    rows.append((tuple(model.classifier[1](x).shape[1:]), _count(model.classifier[1])))
    assert rows == SQUEEZENET_TABLE_1
    assert sum(p for _, p in SQUEEZENET_TABLE_1) == PARAMS["squeezenet1_0"]
    assert model.stage_names == ("features.0",) + tuple(f"features.{i}" for i in (3, 4, 5, 7, 8, 9, 10, 12))


def test_squeezenet_1_1_cuts_computation_2_4x():
    """The authors' 1.1 release: "2.4x less computation than SqueezeNet 1.0, without sacrificing accuracy"."""
    macs = [summarize(_meta(n), (3, 224, 224)).total_macs for n in ("squeezenet1_0", "squeezenet1_1")]
    assert 2.3 < macs[0] / macs[1] < 2.45
    assert PARAMS["squeezenet1_1"] < PARAMS["squeezenet1_0"]  # the same Fire modules; conv1 3x3x64 not 7x7x96


def test_squeezenet_class_conv_classifier():
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=5).eval()
    assert model.get_classifier() is model.classifier[1] and isinstance(model.classifier[1], nn.Conv2d)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        maps = torch.relu(model.classifier[1](features))  # the class maps, ReLU kept as in the paper
    torch.testing.assert_close(logits, maps.mean((2, 3)))
    assert (logits >= 0).all() and features.shape[1] == model.num_features == 512
    model.reset_classifier(3)
    new = model.get_classifier()
    assert isinstance(new, nn.Conv2d) and (new.in_channels, new.out_channels, new.kernel_size) == (512, 3, (1, 1))
    assert float(new.weight.detach().std()) < 0.02 and not new.bias.any()  # as conv10: N(0, 0.01), zero bias
    with torch.inference_mode():
        assert model(x).shape == (2, 3)


# ------------------------------------------------------------------------------------------------------------
# MnasNet
# ------------------------------------------------------------------------------------------------------------


def test_round_depth():
    # torchvision's examples: the nearest multiple of 8, one up when the nearest is more than 10% below.
    assert [round_depth(v) for v in (83, 84, 4, 16 * 0.5, 40 * 0.75)] == [80, 88, 8, 8, 32]


@pytest.mark.parametrize("alpha, name", [(0.5, "mnasnet0_5"), (0.75, "mnasnet0_75"), (1.0, "mnasnet1_0"),
                                         (1.3, "mnasnet1_3")])
def test_mnasnet_depths_and_bn(alpha, name):
    ours = _meta(name)
    with torch.device("meta"):
        theirs = torchvision.models.get_model(name)
    convs = [m.out_channels for m in theirs.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    stem, sep, *widths = stage_depths(alpha)
    assert theirs.layers[0].out_channels == stem and theirs.layers[6].out_channels == sep
    assert [theirs.layers[i][-1].layers[6].out_channels for i in range(8, 14)] == widths
    assert [m.out_channels for m in ours.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)] == convs
    norms = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == BN_MOMENTUM == pytest.approx(3e-4) and m.eps == 1e-5 for m in norms)
    assert ours.channels_last  # depthwise
    # identity shortcuts where stride 1 keeps the channels: every block but the first of each stage
    blocks = [m for m in ours.modules() if isinstance(m, MBConvBlock)]
    assert len(blocks) == 16 and sum(b.apply_residual for b in blocks) == 16 - 6


def test_mnasnet_state_dict_loads_into_torchvision():
    """The other direction of test_parity: our state_dict carries torchvision's MNASNet version (2), which its
    loader reads to decide whether a checkpoint has the old unscaled stem (it would rebuild it for alpha != 1)."""
    torch.manual_seed(0)
    ours = create_model("mnasnet0_5").eval()
    theirs = torchvision.models.mnasnet0_5().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# RegNet
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def torchvision_regnet_on_meta(monkeypatch):
    """torchvision's RegNet builders compute widths with CPU tensors, so they cannot run under torch.device("meta");
    build only the network there (its widths still come from torchvision's own parameters and rule)."""
    network = tv_regnet.RegNet

    def on_meta(*args, **kwargs):
        with torch.device("meta"):
            return network(*args, **kwargs)

    monkeypatch.setattr(tv_regnet, "RegNet", on_meta)
    return lambda name: torchvision.models.get_model(name)


@pytest.mark.parametrize("name", REGNET_NAMES)
def test_regnet_width_rule_matches_torchvision(name, torchvision_regnet_on_meta):
    """regnet_stages(our row) gives the stage widths, depths and group widths of torchvision's built network."""
    theirs = torchvision_regnet_on_meta(name)
    built = [(stage[0].f.c[0].out_channels, len(stage), stage[0].f.b[0].in_channels // stage[0].f.b[0].groups)
             for stage in theirs.trunk_output]
    assert [(s.width, s.depth, s.group_width) for s in regnet_stages(REGNETS[name])] == built
    ours = _meta(name)
    assert [(stage[0].f.c[0].out_channels, len(stage)) for stage in ours.trunk_output] == [b[:2] for b in built]
    assert ours.num_features == built[-1][0] and sum(b[1] for b in built) == REGNETS[name].d


def test_regnet_width_rule_by_hand():
    """RegNetX-400MF (d=22, w0=24, wa=24.48, wm=2.54, g=16), eqs. 2-4 worked through:
    u_j = 24 + 24.48 j; s_j = round(log(u_j / 24) / log 2.54) = 0 for j=0, 1 for j=1-2, 2 for j=3-9, 3 for j=10-21;
    w = 24 * 2.54^s rounded to multiples of 8 = 24, 64 (60.96), 152 (154.8 -> 19.35 x 8 -> 152), 392 (393.3)...
    and the compatibility step (bottleneck width a multiple of g=16) moves 24 -> 32, 152 -> 160, 392 -> 400."""
    stages = regnet_stages(REGNETS["regnet_x_400mf"])
    assert [(s.width, s.depth, s.group_width) for s in stages] == [(32, 1, 16), (64, 2, 16), (160, 7, 16),
                                                                   (400, 12, 16)]
    # a group width wider than the bottleneck is capped at it (RegNetX-8GF's first stage: 80 < 120)
    assert regnet_stages(REGNETS["regnet_x_8gf"])[0].group_width == 80
    # the bottleneck ratio b: the 3x3 works at w * b, which must be a multiple of g
    half = regnet_stages(RegNetRow(13, 48, 36.0, 2.5, 8, b=0.5))
    assert all((s.width * s.bottleneck_ratio) % s.group_width == 0 for s in half)
    with pytest.raises(UserError, match="invalid RegNet parameters"):
        regnet_stages(RegNetRow(13, 50, 36.0, 2.5, 8))  # w0 not a multiple of 8
    with pytest.raises(UserError, match="invalid RegNet parameters"):
        regnet_stages(RegNetRow(13, 48, 36.0, 1.0, 8))  # wm must exceed 1


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_400mf", "regnet_y_128gf"])
def test_regnet_blocks(name):
    model = _meta(name)
    row = REGNETS[name]
    blocks = [m for m in model.modules() if isinstance(m, RegNetBlock)]
    assert len(blocks) == row.d
    width = 32  # the stem
    for stage, spec in zip(model.trunk_output, regnet_stages(row), strict=True):
        for j, block in enumerate(stage):
            # the stride-2 first block of a stage projects its shortcut; the others are identities
            assert isinstance(block.proj, nn.Identity) == (j > 0)
            conv3x3 = block.f.b[0]
            assert conv3x3.stride == ((2, 2) if j == 0 else (1, 1))
            assert conv3x3.in_channels // conv3x3.groups == spec.group_width
            se = getattr(block.f, "se", None)
            assert isinstance(se, SqueezeExcite) == bool(row.se)
            if se is not None:  # RegNetY: SE squeezes to a quarter of the block's input width
                assert se.fc1.out_channels == round(row.se * width)
            width = block.f.c[0].out_channels
    assert model.stage_names == ("stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block3",
                                 "trunk_output.block4")
    assert not model.channels_last  # group convolutions, not depthwise
    features = model.forward_features(torch.zeros(1, 3, 224, 224, device="meta"))
    assert features.shape == (1, model.num_features, 7, 7)  # 32x downsampling
