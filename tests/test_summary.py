"""summarize(): per-layer params, MACs, receptive field and jump, against hand computations and reference values."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.summary import InputSizeError, summarize


def _meta(builder, *args, **kwargs):
    with torch.device("meta"):
        return builder(*args, **kwargs)


def test_lenet5_textbook_table():
    s = summarize(create_model("lenet5"), (1, 32, 32), "lenet5")
    params = {r.name: r.params for r in s.rows if r.params}
    assert list(params.values()) == [156, 2416, 48120, 10164, 850]
    assert s.total_params == 61_706
    rf = {r.name.split(".")[-1]: r.rf[0] for r in s.rows}
    assert [rf[k] for k in ("c1", "s2", "c3", "s4", "c5")] == [5, 6, 14, 16, 32]  # C5 sees the whole 32x32 input
    assert s.row("features.s2").params == 0 and s.row("features.c5").out_shape == (120, 1, 1)


def test_stacked_3x3_convs():
    # The VGG paper's argument: two 3x3 convolutions see 5x5, three see 7x7.
    for depth, expected in ((1, 3), (2, 5), (3, 7)):
        net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(depth)])
        assert summarize(net, (1, 16, 16)).rows[-1].rf == (expected, expected)


def test_stride_dilation_and_asymmetric_kernels():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, dilation=2), nn.Conv2d(1, 1, (1, 7)))
    rows = summarize(net, (1, 64, 64)).rows
    assert [r.rf for r in rows] == [(3, 3), (3 + 2 * 2 * 2, 11), (11, 11 + 6 * 2)]
    assert [r.jump for r in rows] == [(2, 2), (2, 2), (2, 2)]
    assert rows[-1].rf_str == "11x23"


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)
        self.proj = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.proj(torch.cat([self.a(x), self.b(x)], 1))


def test_merge_takes_the_largest_receptive_field():
    s = summarize(TwoBranches(), (3, 16, 16))
    assert s.row("a").rf == (1, 1) and s.row("b").rf == (5, 5) and s.row("proj").rf == (5, 5)


def test_residual_merge():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.after = nn.Identity()

        def forward(self, x):
            return self.after(x + self.conv(self.conv(x)))

    assert summarize(Residual(), (2, 8, 8)).row("after").rf == (5, 5)


def test_grouped_and_depthwise_macs():
    c, h, w = 32, 14, 14
    depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
    assert summarize(depthwise, (c, h, w)).total_macs == 9 * c * h * w
    grouped = nn.Conv2d(64, 128, 3, padding=1, groups=4, bias=False)
    assert summarize(grouped, (64, h, w)).total_macs == 128 * h * w * (64 // 4) * 9


def test_functional_calls_are_counted():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))

        def forward(self, x):
            return F.max_pool2d(F.conv2d(x, self.weight, padding=1), 2)

    s = summarize(Functional(), (3, 10, 10))
    assert s.total_macs == 8 * 10 * 10 * 27
    assert [r.layer_type for r in s.rows] == ["F.conv2d", "F.max_pool2d"]
    assert s.rows[-1].rf == (4, 4) and s.rows[-1].jump == (2, 2)


def test_torchvision_reference_values():
    alexnet = summarize(_meta(torchvision.models.alexnet), (3, 224, 224))
    pools = [r for r in alexnet.rows if r.layer_type == "MaxPool2d"]
    assert (pools[-1].rf, pools[-1].jump) == ((195, 195), (32, 32))
    assert round(alexnet.total_macs / 1e9, 2) == 0.71
    vgg16 = summarize(_meta(torchvision.models.vgg16), (3, 224, 224))
    convs = [r for r in vgg16.rows if r.layer_type == "Conv2d"]
    assert convs[-1].rf == (196, 196)  # conv5_3
    resnet18 = summarize(_meta(torchvision.models.resnet18), (3, 224, 224))
    assert round(resnet18.total_macs / 1e9, 3) == 1.814


def test_too_small_input_names_the_layer():
    with pytest.raises(InputSizeError, match="too small for vgg16 at features"):
        summarize(_meta(torchvision.models.vgg16), (3, 16, 16), "vgg16")


def test_renderings():
    s = summarize(create_model("lenet5"), (1, 32, 32), "lenet5")
    data = json.loads(s.to_json())
    assert data["total_params"] == 61_706 and len(data["layers"]) == len(s.rows)
    assert data["total_flops"] == 2 * data["total_macs"]
    lines = s.to_csv().splitlines()
    assert lines[0].startswith("layer,type,output") and len(lines) == len(s.rows) + 1
    assert "61,706 params" in s.table() and "FLOPs = 2 x MACs" in s.table()


@pytest.mark.parametrize("name", list_models())
def test_macs_agree_with_flop_counter(name):
    """MACs of every registered network, at its default input size, are half of FlopCounterMode's FLOPs."""
    info = model_info(name)
    model = _meta(create_model, name).eval()
    s = summarize(model, info.input_size, name)
    assert s.total_params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *info.input_size, device="meta"))
    assert abs(counter.get_total_flops() - 2 * s.total_macs) <= 0.01 * counter.get_total_flops()
