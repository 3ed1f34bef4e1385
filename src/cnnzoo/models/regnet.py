"""RegNetX and RegNetY: Radosavovic, Kosaraju, Girshick, He & Dollar (2020), "Designing Network Design Spaces",
arXiv:2003.13678.

A RegNet is an AnyNet (section 3.1): a stem (3x3/2 convolution, 32 filters), stages of residual bottleneck
blocks (four in every network here), each stage starting with stride 2, then global pooling and FC. The blocks are
ResNeXt's "X block": 1x1 conv to the bottleneck width w*b, 3x3 group convolution with group width g, 1x1 conv back
to w, BN after each, ReLU after the first two and after the residual sum; a 1x1 projection (+BN) on the shortcut
where the stride or width changes. RegNetY adds squeeze-and-excitation after the 3x3 (section 5), squeezing to
se_ratio = 1/4 of the block's *input* width.

Widths and depths come from six numbers per network by the quantised linear rule (section 3.3, eqs. 2-4), see
`regnet_stages`: d blocks with linearly growing widths u_j = w0 + wa*j, snapped to the nearest power of wm times w0
(so that widths are piecewise constant), rounded to multiples of 8; blocks of equal width form a stage. The group
width must divide the bottleneck width: g is capped at w*b and w*b rounded to a multiple of g (the compatibility
step, with torchvision's rounding rule). The table `REGNETS` holds one row per network: the paper's appendix
models (the "flop regime" names, 400MF to 32GF) and regnet_y_128gf, the SWAG network of Singh et al. (2022,
arXiv:2201.08371).

Module names and parameter order are torchvision's (``stem``, ``trunk_output.block{i}.block{i}-{j}`` with ``proj``
and ``f.a``/``f.b``/``f.se``/``f.c``, ``fc``), so its weights load strictly; parameter counts equal torchvision's,
from 4.3M (regnet_y_400mf) to 645M (regnet_y_128gf).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ConvBNAct, SqueezeExcite, init_weights, make_divisible
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["RegNetRow", "RegNetStage", "REGNETS", "regnet_stages", "RegNet", "RegNetBlock", "regnet_x_400mf",
           "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf",
           "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
           "regnet_y_32gf", "regnet_y_128gf"]

REGNET = Paper("Designing Network Design Spaces", "Radosavovic, Kosaraju, Girshick, He, Dollar", 2020, "2003.13678")

STEM_WIDTH = 32
WIDTH_QUANTUM = 8  # block widths are multiples of 8


class RegNetRow(NamedTuple):
    """A RegNet's parameters in the paper's symbols (section 3.3 and the appendix's model table)."""

    d: int  # depth: blocks in all stages
    w0: int  # initial width
    wa: float  # slope of the linear width rule
    wm: float  # width multiplier between stages (quantisation in log space)
    g: int  # group width of the 3x3 convolutions
    b: float = 1.0  # bottleneck ratio: the 3x3 works at width w * b
    se: float = 0.0  # RegNetY: squeeze-excitation ratio (of the block's input width); 0 for RegNetX


class RegNetStage(NamedTuple):
    width: int  # output width w of every block
    depth: int  # blocks
    group_width: int  # after the compatibility adjustment
    bottleneck_ratio: float


REGNETS: dict[str, RegNetRow] = {
    "regnet_x_400mf": RegNetRow(22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": RegNetRow(16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": RegNetRow(18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": RegNetRow(25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": RegNetRow(23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": RegNetRow(22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": RegNetRow(23, 320, 69.86, 2.0, 168),
    "regnet_y_400mf": RegNetRow(16, 48, 27.89, 2.09, 8, se=0.25),
    "regnet_y_800mf": RegNetRow(14, 56, 38.84, 2.4, 16, se=0.25),
    "regnet_y_1_6gf": RegNetRow(27, 48, 20.71, 2.65, 24, se=0.25),
    "regnet_y_3_2gf": RegNetRow(21, 80, 42.63, 2.66, 24, se=0.25),
    "regnet_y_8gf": RegNetRow(17, 192, 76.82, 2.19, 56, se=0.25),
    "regnet_y_16gf": RegNetRow(18, 200, 106.23, 2.48, 112, se=0.25),
    "regnet_y_32gf": RegNetRow(20, 232, 115.89, 2.53, 232, se=0.25),
    "regnet_y_128gf": RegNetRow(27, 456, 160.83, 2.52, 264, se=0.25),  # SWAG (Singh et al. 2022)
}


def regnet_stages(row: RegNetRow) -> list[RegNetStage]:
    """Stage widths and depths from the quantised linear rule (section 3.3).

    eq. 2: u_j = w0 + wa * j for the blocks j = 0 .. d-1 (a linear width ramp);
    eq. 3: s_j = log(u_j / w0) / log(wm), the ramp's position in steps of wm;
    eq. 4: w_j = w0 * wm ** round(s_j), rounded to a multiple of 8.
    Consecutive blocks of equal width form a stage. Then the group width is made compatible with the bottleneck
    width w * b: g = min(g, w * b) and w * b is rounded to a multiple of g (make_divisible), which sets w."""
    if row.wa < 0 or row.w0 <= 0 or row.wm <= 1 or row.w0 % WIDTH_QUANTUM or row.d < 1:
        raise UserError(f"invalid RegNet parameters {row}: need d >= 1, wa >= 0, wm > 1, w0 a positive multiple of 8")
    widths = []
    for j in range(row.d):
        u = row.w0 + row.wa * j
        s = round(math.log(u / row.w0) / math.log(row.wm))
        widths.append(round(row.w0 * row.wm**s / WIDTH_QUANTUM) * WIDTH_QUANTUM)
    stages: list[list[int]] = []  # [width, depth]
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    result = []
    for w, depth in stages:
        bottleneck = int(w * row.b)
        g = min(row.g, bottleneck)
        bottleneck = make_divisible(bottleneck, g)
        result.append(RegNetStage(int(bottleneck / row.b), depth, g, row.b))
    return result


class RegNetBlock(nn.Module):
    """Residual bottleneck block (the X block; with SE the Y block): ReLU(proj(x) + f(x)), where f is 1x1, 3x3
    group conv (stride here) [+ SE], 1x1; proj is a 1x1 conv + BN where the shape changes, identity elsewhere."""

    def __init__(self, width_in: int, width_out: int, stride: int, group_width: int, bottleneck_ratio: float,
                 se_ratio: float):
        super().__init__()
        if width_in != width_out or stride != 1:
            self.proj = ConvBNAct(width_in, width_out, 1, stride, act=None)
        else:
            self.proj = nn.Identity()  # no parameters: the state_dict keys stay torchvision's
        w_b = int(round(width_out * bottleneck_ratio))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = ConvBNAct(width_in, w_b, 1)
        layers["b"] = ConvBNAct(w_b, w_b, 3, stride, groups=w_b // group_width)
        if se_ratio:
            layers["se"] = SqueezeExcite(w_b, int(round(se_ratio * width_in)))
        layers["c"] = ConvBNAct(w_b, width_out, 1, act=None)
        self.f = nn.Sequential(layers)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.proj(x) + self.f(x))


class RegNet(ZooModel):
    """RegNet from its row of parameters: stem, the stages of `regnet_stages`, pool, FC; torchvision's names.

    Args:
        row: d, w0, wa, wm, g, b, se (RegNetRow).
        num_classes, in_chans: classifier outputs and input channels.
        dropout: before the classifier (none in the paper).
    """

    cam_layer = "trunk_output"
    classifier_path = "fc"

    def __init__(self, row: RegNetRow, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.0):
        super().__init__()
        self.stem = ConvBNAct(in_chans, STEM_WIDTH, 3, 2)
        width = STEM_WIDTH
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, stage in enumerate(regnet_stages(row), 1):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(stage.depth):
                blocks[f"block{i}-{j}"] = RegNetBlock(width, stage.width, 2 if j == 0 else 1, stage.group_width,
                                                      stage.bottleneck_ratio, row.se)
                width = stage.width
            stages[f"block{i}"] = nn.Sequential(blocks)
        self.trunk_output = nn.Sequential(stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        self.stage_names = ("stem",) + tuple(f"trunk_output.{name}" for name in stages)
        self.num_classes, self.num_features = num_classes, width
        self.apply(init_weights)  # torchvision's: N(0, sqrt(2 / fan_out)) convolutions, N(0, 0.01) linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_output(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean((2, 3))))


register = partial(register_model, "RegNet", REGNET)


@register()
def regnet_x_400mf(**kwargs) -> RegNet:
    """RegNetX-400MF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_400mf"], **kwargs)


@register()
def regnet_x_800mf(**kwargs) -> RegNet:
    """RegNetX-800MF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_800mf"], **kwargs)


@register()
def regnet_x_1_6gf(**kwargs) -> RegNet:
    """RegNetX-1.6GF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_1_6gf"], **kwargs)


@register()
def regnet_x_3_2gf(**kwargs) -> RegNet:
    """RegNetX-3.2GF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_3_2gf"], **kwargs)


@register()
def regnet_x_8gf(**kwargs) -> RegNet:
    """RegNetX-8.0GF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_8gf"], **kwargs)


@register()
def regnet_x_16gf(**kwargs) -> RegNet:
    """RegNetX-16GF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_16gf"], **kwargs)


@register()
def regnet_x_32gf(**kwargs) -> RegNet:
    """RegNetX-32GF (no SE), torchvision-compatible."""
    return RegNet(REGNETS["regnet_x_32gf"], **kwargs)


@register()
def regnet_y_400mf(**kwargs) -> RegNet:
    """RegNetY-400MF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_400mf"], **kwargs)


@register()
def regnet_y_800mf(**kwargs) -> RegNet:
    """RegNetY-800MF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_800mf"], **kwargs)


@register()
def regnet_y_1_6gf(**kwargs) -> RegNet:
    """RegNetY-1.6GF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_1_6gf"], **kwargs)


@register()
def regnet_y_3_2gf(**kwargs) -> RegNet:
    """RegNetY-3.2GF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_3_2gf"], **kwargs)


@register()
def regnet_y_8gf(**kwargs) -> RegNet:
    """RegNetY-8.0GF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_8gf"], **kwargs)


@register()
def regnet_y_16gf(**kwargs) -> RegNet:
    """RegNetY-16GF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_16gf"], **kwargs)


@register()
def regnet_y_32gf(**kwargs) -> RegNet:
    """RegNetY-32GF (SE ratio 0.25), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_32gf"], **kwargs)


@register()
def regnet_y_128gf(**kwargs) -> RegNet:
    """RegNetY-128GF (SWAG, Singh et al. 2022; 645M parameters), torchvision-compatible."""
    return RegNet(REGNETS["regnet_y_128gf"], **kwargs)
