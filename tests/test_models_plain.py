"""AlexNet, ZFNet, VGG and NiN: exact parameter counts, the papers' shapes, torchvision's layout, small inputs."""

import pytest
import torch
from torch import nn

from cnnzoo.layers import LocalResponseNorm
from cnnzoo.registry import create_model

# name, kwargs -> trainable parameters (torchvision's figures where it has the model; the VGG paper's Table 2
# gives 133, 133, 134, 138, 144 million for A, B, C, D, E)
GOLDEN = {
    ("alexnet", ()): 61_100_840,
    ("alexnet_v1", ()): 62_378_344,
    ("alexnet_v1", (("towers", 2),)): 60_965_224,
    ("alexnet_half", (("num_classes", 5),)): 14_591_685,
    ("zfnet", ()): 62_357_608,
    ("vgg11", ()): 132_863_336,
    ("vgg11_bn", ()): 132_868_840,
    ("vgg11_lrn", ()): 132_863_336,
    ("vgg13", ()): 133_047_848,
    ("vgg13_bn", ()): 133_053_736,
    ("vgg16_c", ()): 133_638_952,
    ("vgg16", ()): 138_357_544,
    ("vgg16_bn", ()): 138_365_992,
    ("vgg19", ()): 143_667_240,
    ("vgg19_bn", ()): 143_678_248,
    ("vgg16_bn", (("small_input", True), ("num_classes", 10))): 15_253_578,
    ("nin", ()): 966_986,
    ("nin_imagenet", ()): 7_595_176,
}


def _meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


IDS = [name + "".join(f"-{k}={v}" for k, v in kwargs) for name, kwargs in GOLDEN]


@pytest.mark.parametrize("name, kwargs", list(GOLDEN), ids=IDS)
def test_parameter_count(name, kwargs):
    model = _meta(name, **dict(kwargs))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == GOLDEN[name, kwargs]


def _shapes(sequential, x):
    out = []
    for layer in sequential:
        x = layer(x)
        out.append(tuple(x.shape[1:]))
    return out


def test_alexnet_half_first_layer_is_48x55x55():
    model = _meta("alexnet_half", num_classes=5)
    assert _shapes(model.features, torch.zeros(1, 3, 224, 224, device="meta"))[0] == (48, 55, 55)


def test_zfnet_maps_follow_figure_3():
    model = _meta("zfnet")
    shapes = _shapes(model.features, torch.zeros(1, 3, 224, 224, device="meta"))
    convs = [s for s, m in zip(shapes, model.features) if isinstance(m, nn.Conv2d)]
    assert convs == [(96, 110, 110), (256, 26, 26), (384, 13, 13), (384, 13, 13), (256, 13, 13)]
    assert shapes[2] == (96, 55, 55) and shapes[-1] == (256, 6, 6)
    assert model.features[0].kernel_size == (7, 7) and model.features[0].stride == (2, 2)
    assert model.features[4].kernel_size == (5, 5) and model.features[4].stride == (2, 2)


def test_alexnet_v1_is_the_2012_paper():
    model = _meta("alexnet_v1", towers=2)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # conv3 and the FC layers see both towers
    kinds = [type(m).__name__ for m in model.features]
    # conv1 and conv2: ReLU, LRN, overlapping 3x3/2 pool; conv5: ReLU, pool.
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2
    lrn = model.features[2]
    assert (lrn.size, lrn.k, lrn.beta) == (5, 2.0, 0.75) and lrn.alpha / lrn.size == pytest.approx(1e-4)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all((p.kernel_size, p.stride) == (3, 2) for p in pools)
    drops = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 1000]


def test_alexnet_and_vgg_take_other_input_sizes():
    # The adaptive average pool before the classifier (torchvision's) lets any size through.
    for name, size in (("alexnet", 96), ("vgg11", 64), ("zfnet", 300)):
        model = _meta(name, num_classes=3)
        assert model(torch.zeros(1, 3, size, size, device="meta")).shape == (1, 3)


def test_vgg16_features_at_224_are_512x7x7():
    model = _meta("vgg16")
    assert model.forward_features(torch.zeros(1, 3, 224, 224, device="meta")).shape == (1, 512, 7, 7)


@pytest.mark.parametrize(
    "name, convs3, convs1",
    [("vgg11", 8, 0), ("vgg11_lrn", 8, 0), ("vgg13", 10, 0), ("vgg16_c", 10, 3), ("vgg16", 13, 0), ("vgg19", 16, 0)],
)
def test_vgg_configurations(name, convs3, convs1):
    model = _meta(name)
    kernels = [m.kernel_size[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert (kernels.count(3), kernels.count(1)) == (convs3, convs1)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert sum(isinstance(m, LocalResponseNorm) for m in model.features) == (name == "vgg11_lrn")
    assert len(model.stage_names) == 7  # five conv blocks, fc6, fc7


def test_vgg_small_input_at_32():
    model = create_model("vgg11_bn", num_classes=10, small_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2)  # block 5 runs at 4x4; the default stem would give 1x1
        assert model.forward_head(features).shape == (2, 10)


def test_nin_has_no_linear_layer_and_a_conv_classifier():
    model = create_model("nin").eval()
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 5, 1, 1, 3, 1, 1]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        features = model.forward_features(x)
        assert features.shape == (2, 192, 8, 8)
        # The head is the class-map conv then global average pooling, i.e. a linear layer on the pooled map,
        # so the class activation map of class c is w_c . F.
        fc = model.get_classifier()
        pooled = fc.weight.flatten(1) @ features.mean((2, 3)).T + fc.bias[:, None]
        torch.testing.assert_close(model.forward_head(features), pooled.T)
    model.reset_classifier(4)
    assert isinstance(model.get_classifier(), nn.Conv2d) and model.get_classifier().out_channels == 4
    with torch.inference_mode():
        assert model(x).shape == (2, 4)
