"""summarize(): per-layer params, MACs, windows, receptive field and jump, against hand computations, reference
values and, for every registered network, a receptive-field oracle that measures instead of computing."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.catalog import cached_table
from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.summary import InputSizeError, summarize
from modelsizes import sweep


def _meta(builder, *args, **kwargs):
    with torch.device("meta"):
        return builder(*args, **kwargs)


# --------------------------------------------------------------------------------------- receptive-field oracle
# The field of one output measured rather than computed: the input pixels where its gradient is non-zero, in a
# linearised copy of the network in which no path can cancel or switch off. Activations and normalisations become
# the identity, every weight a positive constant (1/fan_in, so values stay finite), max pooling average pooling,
# and a gate's global branch a constant 1 (so only its spatial path counts: the definition summarize documents).
# The copy is the meta-device model run under a TorchFunctionMode on a real float64 input (float64: at the edge of
# a deep network's field the gradient is ~3^-100 of the centre's), so no weight is ever allocated.

_IDENTITY = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "hardswish", "hardswish_",
             "hardsigmoid", "gelu", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "leaky_relu", "leaky_relu_",
             "mish", "softplus", "prelu", "batch_norm", "layer_norm", "group_norm", "instance_norm",
             "local_response_norm", "dropout", "dropout2d", "feature_dropout"}  # fmt: skip
_BROADCASTS = {"expand", "expand_as", "broadcast_to"}


def _two(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # With equal weights every output channel of a group is one map, the group's channel sum filtered by a box:
    # avg_pool2d computes it at the cost of one channel per group. Same function, so the same gradient.
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    summed = x.reshape(n, groups, c // groups, h, w).sum(2)
    box = _two(dilation) == (1, 1) and not isinstance(padding, str)
    if box and all(2 * p <= k for p, k in zip(_two(padding), (kh, kw))):
        y = F.avg_pool2d(summed, (kh, kw), stride, padding, count_include_pad=True) * (groups / c)
    else:
        kernel = torch.full((groups, 1, kh, kw), groups / (c * kh * kw), dtype=x.dtype)
        y = F.conv2d(summed, kernel, None, stride, padding, dilation, groups)
    return y[:, :, None].expand(n, groups, out_c // groups, *y.shape[2:]).reshape(n, out_c, *y.shape[2:]).contiguous()


def _linear(x, weight, bias=None):
    return (x.sum(-1, keepdim=True) / weight.shape[1]).expand(*x.shape[:-1], weight.shape[0]).contiguous()


def _max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    assert _two(dilation) == (1, 1), "average pooling has no dilation"
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad=True)


_REPLACED = {
    "conv2d": _conv2d,
    "linear": _linear,
    "max_pool2d": _max_pool2d,
    "adaptive_max_pool2d": lambda x, output_size, return_indices=False: F.adaptive_avg_pool2d(x, output_size),
}


def _spatial(t) -> tuple | None:
    return tuple(t.shape[-2:]) if isinstance(t, torch.Tensor) and t.dim() >= 3 else None


class _Linearised(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _IDENTITY:
            return args[0]
        if name in _REPLACED:
            return _REPLACED[name](*args, **(kwargs or {}))
        flat, spec = _pytree.tree_flatten((args, kwargs or {}))
        sizes = [_spatial(t) for t in flat]
        spread = name in _BROADCASTS or any(s not in (None, (1, 1)) for s in sizes)
        for i, (t, size) in enumerate(zip(flat, sizes)):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":  # a parameter or buffer
                flat[i] = torch.ones(t.shape, dtype=torch.float64)
            elif spread and size == (1, 1):  # a 1x1 map broadcast over a larger one: a gate's global branch
                flat[i] = torch.ones_like(t)
        args, kwargs = _pytree.tree_unflatten(flat, spec)
        return func(*args, **kwargs)


def _box(grad: torch.Tensor) -> tuple[tuple[int, int], ...]:
    seen = grad[0].abs().sum(0) > 0
    return tuple((int(i.min()), int(i.max())) for i in (seen.any(1).nonzero()[:, 0], seen.any(0).nonzero()[:, 0]))


def _oracle(forward, size: tuple[int, int, int]):
    """(output map size, input box seen by the centre output, input box read by the whole map), boxes per axis."""
    x = torch.ones(1, *size, dtype=torch.float64, requires_grad=True)
    with _Linearised():
        y = forward(x)
    h, w = y.shape[-2:]
    (centre,) = torch.autograd.grad(y[0, :, h // 2, w // 2].sum(), x, retain_graph=True)
    (whole,) = torch.autograd.grad(y.sum(), x)
    return (h, w), _box(centre), _box(whole)


def _predicted(row, out_size, read) -> tuple[tuple[int, int], ...]:
    """The centre output's field by summarize, clipped to the part of the input the network reads at all (near the
    far border, pixels that no window covers, as a strided "valid" convolution leaves, are read by nothing)."""
    boxes = []
    for a in (0, 1):
        lo = row.rf_start[a] + out_size[a] // 2 * row.jump[a]
        boxes.append((max(lo, read[a][0]), min(lo + row.rf[a] - 1, read[a][1])))
    return tuple(boxes)


# The oracle runs on a tall input, H x W: W about the narrowest the network takes, H tall enough for the centre
# output's whole field where that costs at most this many float64 activations (about 0.2 s), shorter (the field
# clipped by the border on both sides, and compared as such) where it does not. CNNZOO_SLOW=1 allows ten times
# more (about 2 s and 0.5 GB per network), which takes the field inside for all but a few. Both sides are the
# default's plus a multiple of the final jump J (the product of the strides): every map then grows by whole
# strides, so every window (and TF "SAME" padding, which depends on the size) sits where it sits at the default
# input, and the field that summarize reports there (start included) holds.
ORACLE_BUDGET = 200_000_000 if os.environ.get("CNNZOO_SLOW") == "1" else 20_000_000
WIDTHS = (8, 16, 32, 48, 64, 96, 128, 160, 224, 299)


def _narrowest(model, channels: int) -> int:
    for width in WIDTHS:
        try:
            with torch.no_grad(), _Linearised():  # cheaper than on the meta device, which decomposes batch norm
                model.forward_features(torch.zeros(1, channels, width, width, dtype=torch.float64))
            return width
        except RuntimeError:
            continue
    raise AssertionError(f"takes none of the widths {WIDTHS}")


def _congruent(size: int, default: int, jump: int, up: bool = True) -> int:
    """The size nearest `size` (above, or below) that is `default` plus a multiple of `jump`."""
    return size + (default - size) % jump if up else size - (size - default) % jump


def _oracle_input(model, input_size, summary, row) -> tuple[int, int, int]:
    channels, pixels = input_size[0], math.prod(input_size[1:])
    # What the oracle stores per input pixel: windows' and merges' outputs (activations and norms are identities).
    stored = [r for r in summary.rows if r.out_shape and not r.aux and (r.kernel or r.layer_type.startswith("F."))]
    per_pixel = sum(math.prod(r.out_shape) for r in stored) / pixels
    width = _congruent(_narrowest(model, channels), input_size[2], row.jump[1])
    tall = _congruent(row.rf[0] + 2 * row.jump[0], input_size[1], row.jump[0])
    affordable = _congruent(int(ORACLE_BUDGET / (width * per_pixel)), input_size[1], row.jump[0], up=False)
    return channels, max(min(tall, affordable), _congruent(width, input_size[1], row.jump[0])), width


def _features_row(summary, model):
    """The row of the map forward_features returns: the last row of the model's cam_layer (test_contract checks
    that module's output is that map; summarize lists every module's output as its last row)."""
    name = model.cam_layer
    return [r for r in summary.rows if r.name == name or r.name.startswith(name + ".")][-1]


# ------------------------------------------------------------------------------------------- every network


def _check_accounting(summary, model) -> None:
    total = sum(p.numel() for p in model.parameters())
    assert summary.total_params == total
    assert sum(r.params for r in summary.rows) == total, "parameters missing from the rows"
    assert all(r.out_shape for r in summary.rows if r.params), "parameters that no traced pass reached"
    assert sum(r.macs for r in summary.rows if not r.aux) == summary.total_macs
    for depth in (1, 2):
        folded = summary.collapse(depth).rows
        assert sum(r.params for r in folded) == total
        assert sum(r.macs for r in folded) == summary.total_macs + summary.aux_macs
    assert not any(r.layer_type == "Identity" for r in summary.rows)


def _check_flop_counter(model, input_size, summary) -> None:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_size, device="meta"))
    assert abs(counter.get_total_flops() - 2 * summary.total_macs) <= 0.01 * counter.get_total_flops()


def _check_receptive_field(model, input_size, summary) -> None:
    row = _features_row(summary, model)
    assert len(row.out_shape) == 3 and row.out_shape[0] == model.num_features
    size = _oracle_input(model, input_size, summary, row)
    out_size, centre, read = _oracle(model.forward_features, size)
    assert centre == _predicted(row, out_size, read), f"at {size}: rf {row.rf} jump {row.jump} start {row.rf_start}"


@pytest.mark.parametrize("name", sweep(list_models()))
def test_registered_network(name):
    """At the default input: every parameter and MAC is in some row, at every depth; MACs are half of
    FlopCounterMode's FLOPs; the cached model table holds these totals; and the receptive field of the map
    forward_features returns is the gradient oracle's."""
    info = model_info(name)
    model = _meta(create_model, name).eval()
    summary = summarize(model, info.input_size, name)
    _check_accounting(summary, model)
    _check_flop_counter(model, info.input_size, summary)
    cached = {r.name: r for r in cached_table()}
    assert name in cached and (cached[name].params, cached[name].macs) == (summary.total_params, summary.total_macs), (
        "the cached model table is stale: run `make readme-table`"
    )
    _check_receptive_field(model, info.input_size, summary)


# ------------------------------------------------------------------------------------------- small networks


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
    assert [r.dilation for r in rows] == [(1, 1), (2, 2), (1, 1)] and rows[-1].kernel == (1, 7)


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


def test_merge_of_offset_branches_is_the_box_around_both():
    class Offset(nn.Module):  # a valid 3x3 branch sees [0, 2] for output 0, a padded one [-1, 1]: the merge sees 4
        def __init__(self):
            super().__init__()
            self.valid, self.same = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.valid(x) + self.same(x)[:, :, :-2, :-2]

    s = summarize(Offset(), (1, 9, 9))
    assert s.rows[-1].name == "add" and s.rows[-1].rf == (4, 4) and s.rows[-1].rf_start == (-1, -1)
    out_size, centre, read = _oracle(Offset(), (1, 9, 9))
    assert centre == _predicted(s.rows[-1], out_size, read)


def test_residual_merge_and_placeholders():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.after = nn.Identity()

        def forward(self, x):
            return self.after(x + self.conv(self.conv(x)))

    s = summarize(Residual(), (2, 8, 8))
    assert [r.name for r in s.rows] == ["conv", "conv", "add"]  # the Identity is no row; the merge is one
    assert s.rows[-1].rf == (5, 5) and s.rows[0].params == 2 * 2 * 9 + 2 and s.rows[1].params == 0


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
    assert s.rows[0].params == 8 * 27 and s.rows[0].kernel == (3, 3) and s.rows[0].padding == (1, 1)
    assert s.rows[-1].rf == (4, 4) and s.rows[-1].jump == (2, 2)


class Gate(nn.Module):
    """Squeeze-and-excitation: x times a per-channel scale from its global average."""

    def __init__(self, expand: bool):
        super().__init__()
        self.fc, self.expand = nn.Conv2d(4, 4, 1), expand

    def forward(self, x):
        scale = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))  # N x C x 1 x 1
        return x * (scale.expand_as(x) if self.expand else scale)


class GatedNet(nn.Module):
    def __init__(self, expand: bool = False):
        super().__init__()
        self.conv1, self.se, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), Gate(expand), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.se(self.conv1(x)))


@pytest.mark.parametrize("expand", [False, True])
def test_a_global_gate_keeps_the_spatial_field(expand):
    s = summarize(GatedNet(expand), (4, 16, 16))
    conv1, mul, conv2 = s.row("conv1"), s.row("se"), s.row("conv2")
    assert (conv1.rf, conv1.jump, conv1.gated) == ((3, 3), (1, 1), False)
    assert mul.layer_type == "F.mul"  # the gate module's output, named after it
    assert (mul.rf, mul.jump, mul.gated) == ((3, 3), (1, 1), True)  # not the gate's whole-map field
    assert (conv2.rf, conv2.jump, conv2.gated) == ((5, 5), (1, 1), True) and conv2.rf_str == "5*"
    out_size, centre, read = _oracle(GatedNet(expand), (4, 16, 16))
    assert centre == _predicted(conv2, out_size, read) == ((6, 10), (6, 10))
    assert "RF*: past a global gate" in s.table()


def test_padding_and_slicing_move_the_field():
    class Shifted(nn.Module):  # NASNet's "path": pad after, drop the first row and column, 1x1 stride-2 pool
        def forward(self, x):
            return F.avg_pool2d(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:], 1, 2)

    row = summarize(Shifted(), (1, 12, 12)).rows[-1]
    assert (row.rf, row.jump, row.rf_start) == ((1, 1), (2, 2), (1, 1))
    out_size, centre, read = _oracle(Shifted(), (1, 12, 12))
    assert centre == _predicted(row, out_size, read) == ((7, 7), (7, 7))


def test_oracle_measures_hand_computed_fields():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, groups=2))
    out_size, centre, read = _oracle(net, (1, 20, 20))  # 3x3 (RF 3), 2x2/2 pool (4, jump 2), 3x3 (8)
    assert out_size == (8, 8) and read == ((0, 19), (0, 19))
    assert centre == ((7, 14), (7, 14))  # output 4 of 8 sees 2*4 - 1 + [0, 7]


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


# The fields of forward_features' map that the oracle matched to the pixel (its field inside the input, or
# clipped by it, as test_registered_network checks), in input pixels.
REFERENCE_RF = {"lenet5": 32, "alexnet": 195, "vgg16": 212, "resnet50": 427, "resnet50_v1": 483,
                "inception_v3": 1311, "densenet121": 2071}  # fmt: skip
# Squeeze-and-excitation networks: the spatial path's field and jump, past the gates.
GATED_RF = {"efficientnet_b0": (851, 32), "efficientnet_b7": (3079, 32), "mobilenet_v3_large": (595, 32),
            "mobilenet_v3_small": (639, 32), "se_resnet50": (427, 32), "se_resnext50_32x4d": (427, 32),
            "senet154": (1455, 32)}  # fmt: skip


@pytest.mark.parametrize("name", [*REFERENCE_RF, *GATED_RF])
def test_reference_receptive_fields(name):
    model = _meta(create_model, name)
    row = _features_row(summarize(model, model_info(name).input_size, name), model)
    rf, jump = GATED_RF.get(name, (REFERENCE_RF.get(name), row.jump[0]))
    assert (row.rf, row.jump, row.gated) == ((rf, rf), (jump, jump), name in GATED_RF)


def test_efficientnet_b0_field_inside_the_input():
    # The oracle with the whole field inside: exactly RF rows of the input change the centre output.
    model = _meta(create_model, "efficientnet_b0").eval()
    row = _features_row(summarize(model, (3, 224, 224)), model)
    out_size, centre, read = _oracle(model.forward_features, (3, 224 + 22 * 32, 32))
    assert centre[0] == _predicted(row, out_size, read)[0] == (23, 873)  # 851 rows, none clipped
    assert 0 < centre[0][0] and centre[0][1] < 927 and (row.rf[0], row.jump[0]) == (851, 32)


def test_the_last_rows_are_the_maps_the_network_makes():
    v3 = summarize(_meta(create_model, "inception_v3"), (3, 299, 299))
    names = [r.name for r in v3.rows]
    features = v3.rows[names.index("avgpool") - 1]  # the map forward_features returns, concatenated by Mixed_7c
    assert (features.name, features.layer_type) == ("Mixed_7c", "F.cat")
    assert (features.out_shape, features.rf) == ((2048, 8, 8), (1311, 1311))
    nin = summarize(create_model("nin"), (3, 32, 32))
    assert (nin.rows[-1].name, nin.rows[-1].out_shape, nin.rows[-1].rf) == ("mean", (10,), (27 + 7 * 4,) * 2)


def test_window_columns_show_a_depthwise_convolution():
    s = summarize(_meta(create_model, "mobilenet_v2"), (3, 224, 224))
    dw = s.row("features.2.block.1.0")  # the first stride-2 block's 3x3 depthwise convolution
    assert (dw.kernel, dw.stride, dw.padding, dw.groups, dw.out_shape) == ((3, 3), (2, 2), (1, 1), 96, (96, 56, 56))
    pointwise = s.row("features.2.block.2.0")
    assert (pointwise.kernel, pointwise.groups) == ((1, 1), 1)
    header, line = s.table().splitlines()[0], next(x for x in s.table().splitlines() if x.startswith(dw.name + " "))
    assert header.split()[:8] == ["layer", "type", "output", "kernel", "stride", "pad", "groups", "params"]
    assert line.split()[:7] == [dw.name, "Conv2d", "96x56x56", "3", "2", "1", "96"]


def test_tensorflow_same_padding_shows_the_pixels_before():
    # TF "SAME" pads max((ceil(n/s) - 1) s + k - n, 0) in all, the odd pixel after; the column shows the pixels
    # before, as a symmetric convolution's own padding. Worked by hand: a 3x3 stride-2 stem on 224 pads 1 in all
    # (0 before), on 225 pads 2 (1 before); the 5x5 stride-2 depthwise on 56 pads 3 (1 before).
    model = _meta(create_model, "tf_efficientnet_b0")
    padding = {size: {r.name: r.padding for r in summarize(model, (3, size, size)).rows} for size in (224, 225)}
    assert padding[224]["features.0.0"] == (0, 0) and padding[225]["features.0.0"] == (1, 1)
    assert padding[224]["features.3.0.block.1.0"] == (1, 1)


def test_placeholders_are_not_listed():
    model = _meta(create_model, "resnet50")
    s = summarize(model, (3, 224, 224))
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) >= 45
    assert {r.layer_type for r in s.rows}.isdisjoint({"Identity", "DropPath"})
    assert "layer1.0.downsample.0" in {r.name for r in s.rows} and "layer1.1.downsample" not in {r.name for r in s.rows}


def test_auxiliary_heads_are_listed():
    s = summarize(_meta(create_model, "googlenet"), (3, 224, 224), "googlenet")
    assert s.total_params == sum(r.params for r in s.rows) == 13_004_888
    aux = [r for r in s.rows if r.aux]
    assert {r.name.split(".")[0] for r in aux} == {"aux1", "aux2"}
    assert sum(r.params for r in aux) == 13_004_888 - 6_624_904  # the listed rows summed to 6,624,904 before
    names = [r.name for r in s.rows]
    assert names[names.index("aux1.pool") - 1] == "inception4a"  # where the head branches off, in call order
    assert s.aux_macs > 0 and sum(r.macs for r in s.rows if not r.aux) == s.total_macs
    assert "aux: training-only auxiliary heads" in s.table()


def test_the_training_pass_leaves_no_trace():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.aux = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))

        def forward(self, x):
            x = self.bn(self.conv(x))
            return (x, self.aux(x)) if self.training else x

    model = WithAux().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    s = summarize(model, (3, 8, 8))
    assert [r.name for r in s.rows] == ["conv", "bn", "aux.0", "aux.1", "aux.2"]
    assert [r.aux for r in s.rows] == [False, False, True, True, True]
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_collapse_gives_the_papers_stage_table():
    s = summarize(_meta(create_model, "resnet50"), (3, 224, 224), depth=1)
    names = [r.name for r in s.rows]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    stages = [s.row(f"layer{i}") for i in range(1, 5)]
    assert [r.out_shape for r in stages] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert [r.jump[0] for r in stages] == [4, 8, 16, 32] and stages[-1].rf == (427, 427)
    assert [r.params for r in stages] == [215_808, 1_219_584, 7_098_368, 14_964_736]
    assert sum(r.params for r in s.rows) == s.total_params and sum(r.macs for r in s.rows) == s.total_macs
    blocks = summarize(_meta(create_model, "resnet50"), (3, 224, 224)).collapse(2)
    assert [r.name for r in blocks.rows if r.name.startswith("layer1")] == ["layer1.0", "layer1.1", "layer1.2"]
    assert blocks.row("layer1.0").layer_type == "Bottleneck"


def test_too_small_input_names_the_layer():
    with pytest.raises(InputSizeError, match="too small for vgg16 at features"):
        summarize(_meta(torchvision.models.vgg16), (3, 16, 16), "vgg16")


def test_renderings():
    s = summarize(create_model("lenet5"), (1, 32, 32), "lenet5")
    data = json.loads(s.to_json())
    assert data["total_params"] == 61_706 and len(data["layers"]) == len(s.rows)
    assert data["total_flops"] == 2 * data["total_macs"]
    c1 = data["layers"][0]
    assert (c1["kernel"], c1["stride"], c1["padding"], c1["groups"], c1["gated"]) == ([5, 5], [1, 1], [0, 0], 1, False)
    lines = s.to_csv().splitlines()
    assert lines[0].startswith("layer,type,output,kernel_h,kernel_w,stride_h") and len(lines) == len(s.rows) + 1
    assert lines[1].split(",")[:12] == ["features.c1", "Conv2d", "6x28x28", "5", "5", "1", "1", "0", "0", "1", "1", "1"]
    assert "61,706 params" in s.table() and "FLOPs = 2 x MACs" in s.table()
