"""The Keras-applications families: Xception, ResNetV2 (Keras' layout), NASNet-A Mobile and Large.

Oracles: Keras' documented parameter counts (exact), the papers' parameter and mult-add figures, and timm's own
networks (legacy_xception, nasnetalarge), randomly initialised, whose state_dicts must load strictly into ours and
give the same eval-mode outputs. Counts and MACs are taken on the meta device; real forwards run at small inputs.
"""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.summary import summarize

timm = pytest.importorskip("timm")

# Keras' "Total params" (keras.io/api/applications; model.summary()), which count BatchNorm's moving mean and
# variance as non-trainable parameters. Ours are the trainable ones; the BN running statistics are buffers.
KERAS_TOTAL = {"resnet50v2": 25_613_800, "resnet101v2": 44_675_560, "resnet152v2": 60_380_648}
KERAS_TRAINABLE = {"xception": 22_855_952}  # also timm's legacy_xception
PAPER_PARAMS = {"xception": 22.8e6}  # Chollet 2017, Table 3


def _meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn_stats(model: nn.Module) -> int:
    return sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so that an eval-mode comparison exercises every tensor."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _timm_parity(ours: nn.Module, theirs: nn.Module, size: int, key_map=lambda k: k) -> None:
    """theirs' state_dict loads strictly into ours and both give the same eval-mode logits."""
    state = theirs.state_dict()
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in state.values()]
    assert [key_map(k) for k in ours.state_dict()] == list(state)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = theirs.eval()(x), ours.eval()(x)
    assert expected.abs().max() > 1e-2  # a comparison of vanishing logits would say little
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_every_model_is_covered():
    names = {"xception", "resnet50v2", "resnet101v2", "resnet152v2", "nasnet_a_mobile", "nasnet_a_large"}
    assert names <= set(list_models())
    assert model_info("xception").input_size == (3, 299, 299)
    assert model_info("nasnet_a_large").input_size == (3, 331, 331)
    assert model_info("nasnet_a_mobile").input_size == (3, 224, 224)


# ------------------------------------------------------------------------------------------------ Xception


def test_xception_parameters():
    model = _meta("xception")
    assert _params(model) == KERAS_TRAINABLE["xception"]
    assert abs(_params(model) - PAPER_PARAMS["xception"]) <= 0.005 * PAPER_PARAMS["xception"]


def test_xception_flows():
    s = summarize(_meta("xception"), (3, 299, 299), "xception")
    # Figure 5: 147x147 after the stem, 19x19 x 728 through the middle flow, 10x10 x 2048 at the end
    assert s.row("act2").out_shape == (64, 147, 147)
    assert s.row("block3.skipbn").out_shape == (728, 19, 19)
    assert all(s.row(f"block{i}.rep.8").out_shape == (728, 19, 19) for i in range(4, 12))  # 3 separable convs
    assert s.row("act4").out_shape == (2048, 10, 10)
    # the middle flow's shortcuts are identities; the downsampling blocks project with a 1x1/2 convolution
    model = _meta("xception")
    assert [model.get_submodule(f"block{i}").skip is not None for i in range(1, 13)] == [True] * 3 + [False] * 8 + [True]
    # separable = depthwise then pointwise, with nothing between them
    sep = model.block4.rep[1]
    assert sep.conv1.groups == sep.conv1.in_channels == 728 and sep.pointwise.kernel_size == (1, 1)


def test_xception_macs_equal_flop_counter_on_timm():
    """Our MACs at 299 against torch's own FLOP counter run on timm's network (an independent count and model)."""
    ours = summarize(_meta("xception"), (3, 299, 299), "xception").total_macs
    with torch.device("meta"):
        theirs = timm.create_model("legacy_xception", pretrained=False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(torch.zeros(1, 3, 299, 299, device="meta"))
    assert 2 * ours == counter.get_total_flops()
    assert round(ours / 1e9, 1) == 8.4


def test_xception_timm_parity():
    torch.manual_seed(0)
    theirs = _randomize_bn(timm.create_model("legacy_xception", pretrained=False, num_classes=10))
    with torch.device("meta"):  # the weights come from timm's
        ours = create_model("xception", num_classes=10)
    _timm_parity(ours.to_empty(device="cpu"), theirs, size=64)


# ------------------------------------------------------------------------------------------------ ResNetV2


@pytest.mark.parametrize("name", list(KERAS_TOTAL))
def test_resnetv2_parameters_equal_keras(name):
    model = _meta(name)
    assert _params(model) + _bn_stats(model) == KERAS_TOTAL[name]


def test_resnetv2_keras_layout():
    """stack2: the stride on the last unit of stages 1-3, a conv shortcut on the first unit of every stage, a
    stride-2 1x1 max pool shortcut on the strided unit; biases on the stem and the units' last 1x1 only."""
    model = _meta("resnet50v2")
    s = summarize(model, (3, 224, 224), "resnet50v2")
    assert s.row("maxpool.1").out_shape == (64, 56, 56)
    sizes = [[s.row(f"layer{i}.{u}.conv3").out_shape[1] for u in range(n)] for i, n in enumerate([3, 4, 6, 3], 1)]
    assert sizes == [[56, 56, 28], [28, 28, 28, 14], [14] * 5 + [7], [7, 7, 7]]
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        units = [m for m in stage if hasattr(m, "conv3")]
        assert isinstance(units[0].downsample, nn.Conv2d) and units[0].downsample.bias is not None
        assert all(not isinstance(u.downsample, nn.Conv2d) for u in units[1:])
    assert isinstance(model.layer1[-1].downsample, nn.MaxPool2d) and model.layer1[-1].conv2.stride == (2, 2)
    assert isinstance(model.layer4[2].downsample, nn.Identity)  # stage 4 keeps 7x7
    assert model.conv1.bias is not None and model.layer1[0].conv3.bias is not None
    assert model.layer1[0].conv1.bias is None and model.layer1[0].conv2.bias is None
    assert isinstance(model.layer4.norm, nn.BatchNorm2d) and model.layer4.norm.eps == pytest.approx(1.001e-5)
    assert s.row("layer4.act").out_shape == (2048, 7, 7)


def test_resnetv2_differs_from_preact_resnet50():
    """Same depths and width, different placement of the stride (first vs last unit) and of the biases."""
    keras, ours = _meta("resnet50v2"), _meta("preact_resnet50")
    assert keras.layer2[0].conv2.stride == (1, 1) and ours.layer2[0].conv2.stride == (2, 2)
    assert _params(keras) - _params(ours) == 25_568_360 - 25_549_352


def test_resnetv2_forward_paths():
    """With the residual branch zeroed, a unit returns its shortcut: the raw input (identity), a 2x subsampling of
    the raw input (the strided last unit), or a 1x1 convolution of the pre-activated input (the first unit)."""
    torch.manual_seed(0)
    model = _randomize_bn(create_model("resnet50v2", num_classes=10)).eval()
    for unit in (model.layer1[1], model.layer1[2], model.layer2[0]):
        nn.init.zeros_(unit.conv3.weight), nn.init.zeros_(unit.conv3.bias)
    x = torch.randn(1, 256, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(model.layer1[1](x), x)
        torch.testing.assert_close(model.layer1[2](x), x[:, :, ::2, ::2])
        first = model.layer2[0]
        torch.testing.assert_close(first(x), first.downsample(torch.relu(first.bn1(x))))
