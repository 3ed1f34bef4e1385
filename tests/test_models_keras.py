"""The Keras-applications families: Xception, ResNetV2 (Keras' layout), NASNet-A Mobile and Large.

Oracles: Keras' documented parameter counts (exact), the papers' parameter and mult-add figures, and timm's own
networks (legacy_xception, nasnetalarge), randomly initialised, whose state_dicts must load strictly into ours and
give the same eval-mode outputs. Counts and MACs are taken on the meta device; real forwards run at small inputs.
"""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.models.nasnet import NORMAL_CELL, REDUCTION_CELL, ScheduledDropPath, scheduled_drop_prob
from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.summary import summarize
from oracles import randomize_bn

timm = pytest.importorskip("timm")

# Keras' "Total params" (keras.io/api/applications; model.summary()), which count BatchNorm's moving mean and
# variance as non-trainable parameters. Ours are the trainable ones; the BN running statistics are buffers.
KERAS_TOTAL = {
    "resnet50v2": 25_613_800,
    "resnet101v2": 44_675_560,
    "resnet152v2": 60_380_648,
    "nasnet_a_mobile": 5_326_716,  # NASNetMobile, without the auxiliary head (Keras has none)
    "nasnet_a_large": 88_949_818,  # NASNetLarge
}
KERAS_TRAINABLE = {"xception": 22_855_952}  # also timm's legacy_xception
PAPER_PARAMS = {"xception": 22.8e6}  # Chollet 2017, Table 3
# Zoph et al. 2018, Tables 2 and 3: parameters and mult-adds, (C, H, W) of the ImageNet input
NASNET_PAPER = {
    "nasnet_a_mobile": (5.3e6, 564e6, (3, 224, 224)),
    "nasnet_a_large": (88.9e6, 23.8e9, (3, 331, 331)),
}
# With the auxiliary classifier (cnnzoo's default, as GoogLeNet's): golden counts at 1000 classes.
NASNET_WITH_AUX = {"nasnet_a_mobile": 7_701_218, "nasnet_a_large": 93_320_934}


def _meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn_stats(model: nn.Module) -> int:
    return sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))


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
    projects = [model.get_submodule(f"block{i}").skip is not None for i in range(1, 13)]
    assert projects == [True] * 3 + [False] * 8 + [True]
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
    theirs = randomize_bn(timm.create_model("legacy_xception", pretrained=False, num_classes=10))
    with torch.device("meta"):  # the weights come from timm's
        ours = create_model("xception", num_classes=10)
    _timm_parity(ours.to_empty(device="cpu"), theirs, size=64)


# ------------------------------------------------------------------------------------------------ ResNetV2


@pytest.mark.parametrize("name", list(KERAS_TOTAL))
def test_parameters_equal_keras(name):
    model = _meta(name, **({"aux_logits": False} if name.startswith("nasnet") else {}))
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
    model = randomize_bn(create_model("resnet50v2", num_classes=10)).eval()
    for unit in (model.layer1[1], model.layer1[2], model.layer2[0]):
        nn.init.zeros_(unit.conv3.weight), nn.init.zeros_(unit.conv3.bias)
    x = torch.randn(1, 256, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(model.layer1[1](x), x)
        torch.testing.assert_close(model.layer1[2](x), x[:, :, ::2, ::2])
        first = model.layer2[0]
        torch.testing.assert_close(first(x), first.downsample(torch.relu(first.bn1(x))))


# ------------------------------------------------------------------------------------------------ NASNet-A

# TF-slim's nasnet_utils.py (the authors' release): operations, hidden-state indices and used states per cell.
TF_SLIM_CELLS = {
    "normal": (
        ["separable_5x5_2", "separable_3x3_2", "separable_5x5_2", "separable_3x3_2", "avg_pool_3x3", "none",
         "avg_pool_3x3", "avg_pool_3x3", "separable_3x3_2", "none"],
        [0, 1, 1, 1, 0, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0, 0],
    ),
    "reduction": (
        ["separable_5x5_2", "separable_7x7_2", "max_pool_3x3", "separable_7x7_2", "avg_pool_3x3", "separable_5x5_2",
         "none", "avg_pool_3x3", "separable_3x3_2", "max_pool_3x3"],
        [0, 1, 0, 1, 0, 1, 3, 2, 2, 0],
        [1, 1, 1, 0, 0, 0, 0],
    ),
}
TF_OP = {"sep3x3": "separable_3x3_2", "sep5x5": "separable_5x5_2", "sep7x7": "separable_7x7_2",
         "avg3x3": "avg_pool_3x3", "max3x3": "max_pool_3x3", "identity": "none"}


@pytest.mark.parametrize(("kind", "spec"), [("normal", NORMAL_CELL), ("reduction", REDUCTION_CELL)])
def test_cell_tables_equal_tf_slim(kind, spec):
    operations, indices, used = TF_SLIM_CELLS[kind]
    pairs = [pair for block in spec.blocks for pair in block]
    assert [TF_OP[op] for _, op in pairs] == operations and [state for state, _ in pairs] == indices
    assert spec.concat == [i for i, u in enumerate(used) if not u]  # the unused states are concatenated
    assert spec.reduction == (kind == "reduction")


def _op_signature(module: nn.Module | None) -> tuple:
    """(kind, kernel, stride) of one cell operation, for ours and timm's alike; identities are absent in timm."""
    if module is None or isinstance(module, nn.Identity):
        return ("identity",)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    if convs:
        return ("sep", convs[0].kernel_size, convs[0].stride, len(convs))
    pool = next(m for m in module.modules() if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)))
    return (type(pool).__name__.removesuffix("Same"), pool.stride if isinstance(pool.stride, int) else pool.stride[0])


def test_cells_match_timm_nasnetalarge_op_by_op():
    """Every cell of ours has, under each comb_iter_{b}_{left|right} name, the operation timm's network has there."""
    ours = _meta("nasnet_a_large", aux_logits=False)
    with torch.device("meta"):
        theirs = timm.create_model("nasnetalarge", pretrained=False)
    assert list(ours.cells) == [n for n in theirs.layer_names if n != "conv0"]
    for name, cell in ours.cells.items():
        for b in range(5):
            for side in ("left", "right"):
                op = f"comb_iter_{b}_{side}"
                assert _op_signature(getattr(cell, op)) == _op_signature(getattr(getattr(theirs, name), op, None)), (
                    f"{name}.{op}"
                )


@pytest.mark.parametrize("name", list(NASNET_PAPER))
def test_nasnet_paper_parameters_and_mult_adds(name):
    params, macs, size = NASNET_PAPER[name]
    model = _meta(name, aux_logits=False)
    s = summarize(model, size, name)
    assert abs(s.total_params - params) <= 0.02 * params
    assert abs(s.total_macs - macs) <= 0.02 * macs
    assert _params(_meta(name)) == NASNET_WITH_AUX[name]
    # N @ P: the last cell outputs P channels, on a 7x7 (Mobile, 224) or 11x11 (Large, 331) map
    assert s.row("act").out_shape == (model.num_features, *((7, 7) if "mobile" in name else (11, 11)))


def test_nasnet_large_macs_equal_flop_counter_on_timm():
    ours = summarize(_meta("nasnet_a_large", aux_logits=False), (3, 331, 331), "nasnet_a_large").total_macs
    with torch.device("meta"):
        theirs = timm.create_model("nasnetalarge", pretrained=False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(torch.zeros(1, 3, 331, 331, device="meta"))
    assert 2 * ours == counter.get_total_flops()


def test_nasnet_large_timm_parity():
    """timm's nasnetalarge (random weights, random BN statistics) loads strictly and gives the same logits; its cells
    sit at the top level where ours sit in `cells`. 32x32 exercises both odd (15) and even (8) "SAME" paddings."""
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model("nasnetalarge", pretrained=False, num_classes=10))
    with torch.device("meta"):
        ours = create_model("nasnet_a_large", num_classes=10, aux_logits=False)
    state = theirs.state_dict()
    assert [k.replace("cells.", "", 1) for k in ours.state_dict()] == list(state)
    ours.load_state_dict(state, strict=True, assign=True)  # timm's tensors themselves: nothing is allocated
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = theirs.eval()(x), ours.eval()(x)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_nasnet_wiring():
    """Stem cells are reduction cells at F/4 and F/2; the first cell of a stack reduces h_{i-1} (factorized);
    Large's cell after a reduction reads the cell before the reduction's input (TF-slim skip_reduction_layer_input),
    Mobile's the reduction's input."""
    for name, f, n in (("nasnet_a_mobile", 44, 4), ("nasnet_a_large", 168, 6)):
        model = _meta(name)
        cells = model.cells
        assert cells["cell_stem_0"].conv_1x1.conv.out_channels == f // 4
        assert cells["cell_stem_1"].conv_1x1.conv.out_channels == f // 2
        stem_op = cells["cell_stem_0"].comb_iter_0_right.separable_1  # reads the stem convolution's raw output
        assert stem_op.depthwise_conv2d.in_channels == model.conv0.conv.out_channels
        assert [c.out_channels for c in cells.values()][-1] == 24 * f
        firsts = ["cell_0", f"cell_{n}", f"cell_{2 * n}", "cell_stem_1"]
        assert sorted(k for k, c in cells.items() if c.path_1 is not None) == sorted(firsts)
        names = list(cells)
        offsets = dict(zip(names, model.prev_offsets))
        skip = 3 if "large" in name else 2
        assert offsets[f"cell_{n}"] == offsets[f"cell_{2 * n}"] == skip
        assert {offsets[k] for k in names if k not in (f"cell_{n}", f"cell_{2 * n}")} == {2}
        assert names[model.aux_index] == f"cell_{2 * n - 1}"  # the aux head reads the last cell of stack 2


def test_nasnet_aux_head_and_modes():
    model = _meta("nasnet_a_mobile", num_classes=10)  # shapes and modes only: the meta device computes nothing
    out = model.train()(torch.empty(2, 3, 96, 96, device="meta"))
    assert isinstance(out, tuple) and len(out) == 2 and all(o.shape == (2, 10) for o in out)
    small = model(torch.empty(2, 3, 32, 32, device="meta"))  # the aux head's 5x5 pool is skipped on its 1x1 map
    assert all(o.shape == (2, 10) for o in small)
    logits = model.eval()(torch.empty(2, 3, 96, 96, device="meta"))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    plain = _meta("nasnet_a_mobile", aux_logits=False)
    assert not [k for k in plain.state_dict() if k.startswith("aux_head")]
    model.reset_classifier(3)
    assert model.aux_head.fc.out_features == 3 and model.last_linear.out_features == 3
    # at the default input the aux head's 768-filter convolution spans the whole 4x4 (Mobile) / 6x6 (Large) map
    for name, size, grid in (("nasnet_a_mobile", 224, 4), ("nasnet_a_large", 331, 6)):
        m = _meta(name).train()
        seen = {}
        m.aux_head.conv.register_forward_hook(lambda mod, i, o: seen.update(inp=i[0].shape, out=o.shape))
        m(torch.zeros(2, 3, size, size, device="meta"))
        assert seen["inp"][-2:] == (grid, grid) and seen["out"][-2:] == (1, 1)


def test_nasnet_receptive_field_through_cells():
    """summarize follows the merges (a sum or concat takes its inputs' largest field). By hand for the first stem
    cell: conv0 3x3/2 gives 3 (jump 2); sep 7x7/2 then sep 7x7 on it give 3 + 6*2 = 15 (jump 4), then 15 + 6*4 = 39,
    which block 1 adds to the smaller sep 5x5 path; the 3x3 avg pool and the two sep 3x3 on block 1 reach
    39 + 2*4 = 47 and 39 + 2*4 + 2*4 = 55: the cell's output field is 55."""
    s = summarize(_meta("nasnet_a_large", aux_logits=False), (3, 331, 331), "nasnet_a_large")
    assert s.row("conv0.conv").rf == (3, 3)
    assert s.row("cells.cell_stem_1.conv_1x1.act").rf == (55, 55)  # the ReLU on cell_stem_0's output
    fields = [s.row(f"cells.cell_{i}.conv_1x1.act").rf[0] for i in range(1, 18)]
    assert fields == sorted(fields) and fields[-1] > 331
    assert s.row("act").jump == (32, 32)


def test_scheduled_drop_path():
    model = create_model("nasnet_a_mobile", num_classes=10, drop_path_rate=0.3)
    names = list(model.cells)

    def rates(cell: str) -> list[float]:
        return [m.p for m in model.cells[cell].modules() if isinstance(m, ScheduledDropPath)]

    # full rate until a schedule is set: linear in depth, 0.3 at the last of the 16 cells
    assert rates("cell_11") == pytest.approx([0.3] * 8) and rates("cell_stem_0") == pytest.approx([0.3 / 16] * 9)
    for progress in (0.0, 0.25, 1.0, 2.0):
        model.set_training_progress(progress)
        for i, n in enumerate(names):
            expected = 0.3 * (i + 1) / 16 * min(progress, 1.0)
            assert rates(n) == pytest.approx([expected] * len(rates(n)))
    assert scheduled_drop_prob(0.3, 15, 16, 0.5) == pytest.approx(0.15)
    # identities are never dropped: the normal cell has 8 dropped operations, the reduction cell 9
    counts = {n: sum(isinstance(m, ScheduledDropPath) for m in c.modules()) for n, c in model.cells.items()}
    assert counts["cell_0"] == 8 and counts["reduction_cell_0"] == 9


def test_scheduled_drop_path_mechanism():
    drop = ScheduledDropPath(0.5)
    x = torch.ones(4000, 3, 2, 2)
    drop.set_progress(0.5)  # p = 0.25
    out = drop.train()(x)
    dropped = (out[:, 0, 0, 0] == 0).float().mean()
    assert abs(dropped - 0.25) < 0.03
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.75))  # survivors scaled by 1/(1-p)
    assert torch.equal(drop.eval()(x), x)
