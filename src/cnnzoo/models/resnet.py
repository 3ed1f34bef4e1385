"""Residual networks: ResNet, pre-activation ResNet, Wide ResNet, ResNeXt, SE-ResNet/ResNeXt and SENet-154.

- He, Zhang, Ren, Sun (2015), "Deep residual learning for image recognition", arXiv:1512.03385.
- He, Zhang, Ren, Sun (2016), "Identity mappings in deep residual networks", arXiv:1603.05027.
- Zagoruyko, Komodakis (2016), "Wide residual networks", arXiv:1605.07146.
- Xie, Girshick, Dollar, Tu, He (2017), "Aggregated residual transformations for deep neural networks",
  arXiv:1611.05431.
- Hu, Shen, Sun (2018), "Squeeze-and-excitation networks", arXiv:1709.01507.
- Huang, Sun, Liu, Sedra, Weinberger (2016), "Deep networks with stochastic depth", arXiv:1603.09382.

ResNet v1.5. Every bottleneck network under a torchvision name (resnet50, resnext50_32x4d, wide_resnet50_2, ...)
is torchvision's "v1.5": a downsampling bottleneck carries its stride on the 3x3 convolution, where the paper (and
its Caffe release) put it on the first 1x1. v1.5 is slightly more accurate and is what torchvision's weights
are; module names and parameter order are torchvision's, so its state_dicts load strictly. `resnet50_v1` is the
paper's network, stride on the first 1x1 (the parameter count is the same).

Shortcuts (He et al. 2015, sec. 3.3 and Table 3), the `shortcut` argument:
    A  identity; where the shape changes, subsample by the stride and append zero channels (no parameters)
    B  projection (1x1 conv + BN) only where the shape changes, identity elsewhere (the default, torchvision's)
    C  projection on every block

CIFAR networks (He et al. 2015, sec. 4.2): a 3x3 convolution with 16 filters, three stages of n blocks on the
32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters, global average pooling and a 10-way fc: 6n+2 layers,
option A shortcuts. The later CIFAR networks keep that layout: pre-activation ResNet-164/1001 (bottlenecks,
9n+2 layers), WRN-d-k (pre-activation basic blocks k times wider, 6n+4 layers, dropout between the two 3x3
convolutions as an option) and ResNeXt-29 (a 64-filter stem and three stages of three grouped bottlenecks).

Pre-activation networks put BN-ReLU before each convolution of the residual branch, so that the shortcut path is
a clean identity from block to block. The stem is a bare convolution (the first unit's BN-ReLU acts "right after
conv1", He et al. 2016, sec. 4.1), projection shortcuts are a bare 1x1 convolution that sees the pre-activated
input, and the last stage ends with the extra BN-ReLU that precedes the pooling.

SE networks: an SE block (cnnzoo.layers.SqueezeExcite) on the residual branch, after the last BN and before the
addition, reduction 16 with the squeeze width rounded to a multiple of 8, as in timm's SE-ResNets (whose
parameter counts we match). `senet154` follows the SE paper's appendix: the 64x4d ResNeXt-152 with SE blocks,
the first 1x1 of every bottleneck halved, three 3x3 convolutions in place of the 7x7 stem, 3x3 stride-2
downsampling projections, and dropout 0.2 before the classifier.

Stochastic depth (Huang et al. 2016), `drop_path_rate` on every network here: block l of L drops its residual
branch with probability drop_path_rate * l / L (a survival probability decaying linearly with depth, eq. 4),
identity in eval mode.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import DropPath, SqueezeExcite, init_weights, make_divisible
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

RESNET = Paper("Deep residual learning for image recognition", "He, Zhang, Ren, Sun", 2015, "1512.03385")
PREACT = Paper("Identity mappings in deep residual networks", "He, Zhang, Ren, Sun", 2016, "1603.05027")
WRN = Paper("Wide residual networks", "Zagoruyko, Komodakis", 2016, "1605.07146")
RESNEXT = Paper(
    "Aggregated residual transformations for deep neural networks", "Xie, Girshick, Dollar, Tu, He", 2017, "1611.05431"
)
SENET = Paper("Squeeze-and-excitation networks", "Hu, Shen, Sun", 2018, "1709.01507")

# He et al. 2015, Table 1: blocks in conv2_x, conv3_x, conv4_x, conv5_x (basic blocks up to 34 layers,
# bottlenecks from 50). SENet-154 takes the 152-layer depths.
LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
IMAGENET_PLANES = (64, 128, 256, 512)  # 3x3 filters of each stage's blocks (x expansion at the block output)

# The CIFAR networks, blocks per stage on the 32x32, 16x16, 8x8 maps:
#   ResNet-(6n+2), He et al. 2015 sec. 4.2      basic blocks, 16/32/64 filters, option A
#   PreAct-ResNet-(9n+2), He et al. 2016        bottlenecks, 16/32/64 filters (64/128/256 out)
#   WRN-(6n+4)-k, Zagoruyko & Komodakis, Tab. 1  pre-activation basic blocks, 16k/32k/64k filters
#   ResNeXt-29 Cxd, Xie et al. sec. 5.3          3 bottlenecks per stage, C groups of d, 256/512/1024 out
CIFAR_N = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}
PREACT_CIFAR_N = {164: 18, 1001: 111}
WRN_N = {16: 2, 28: 4, 40: 6}
CIFAR_PLANES = (16, 32, 64)
RESNEXT29_PLANES = (64, 128, 256)

# SENet-154 (Hu et al. 2018, appendix): the 64x4d ResNeXt-152 with SE blocks and (1) the first 1x1 of each
# bottleneck halved (SENetBottleneck), (2) three 3x3 convolutions in place of the 7x7 stem, (3) 3x3 stride-2
# downsampling projections, (4) dropout 0.2 before the classifier.
SENET154 = {"groups": 64, "width_per_group": 4, "se": True, "stem": "deep", "shortcut_kernel": 3, "dropout": 0.2}

SHORTCUTS = ("A", "B", "C")
STEMS = ("7x7", "deep")
# The 3x3/2 max pool after the stem: torchvision pads it by 1; Caffe's models (the SE paper's release) pool without
# padding in ceil mode. Both give 56x56 from 112x112, but over windows shifted by one pixel.
STEM_POOLS = {"pad": lambda: nn.MaxPool2d(3, 2, 1), "ceil": lambda: nn.MaxPool2d(3, 2, ceil_mode=True)}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


def _se(channels: int, se: bool, divisor: int = 8) -> nn.Module:
    if not se:
        return nn.Identity()
    # reduction 16 (Hu et al. 2018, sec. 6.1); timm rounds the squeeze width to a multiple of 8, the SE paper's
    # released models (divisor 1) round it down
    width = channels // 16 if divisor == 1 else make_divisible(channels / 16, divisor)
    return SqueezeExcite(channels, width)


class PadShortcut(nn.Module):
    """Option A: subsample by the stride and append zero channels; no parameters."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, [0, 0, 0, 0, 0, self.extra_channels])  # zeros after the existing channels

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


class Projection(nn.Sequential):
    """Options B and C: a strided convolution, followed by BN in post-activation networks (torchvision's
    `downsample`, children 0 and 1). SENet-154 widens its stride-2 projections to 3x3."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int = 1, norm: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        super().__init__(*layers)


def make_shortcut(
    kind: str, in_channels: int, out_channels: int, stride: int, preact: bool, kernel_size: int = 1
) -> nn.Module | None:
    """The shortcut of one block under option A, B or C; None for a plain identity."""
    reshapes = stride != 1 or in_channels != out_channels
    if kind == "C" or (kind == "B" and reshapes):
        return Projection(in_channels, out_channels, stride, kernel_size if stride != 1 else 1, norm=not preact)
    return PadShortcut(out_channels - in_channels, stride) if reshapes else None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions, post-activation (He et al. 2015, Fig. 2): conv-BN-ReLU-conv-BN, add, ReLU."""

    expansion = 1
    preact = False
    se_divisor = 8  # squeeze widths rounded to multiples of 8 (timm's); 1 in the SE paper's release
    relu_before_se = False

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise UserError("basic blocks take groups=1 and width_per_group=64 only; use a bottleneck block")
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = _se(planes, se, self.se_divisor)
        self.drop_path = DropPath(drop_path)
        self.downsample = downsample if downsample is not None else nn.Identity()
        # timm's legacy SE-ResNet-18/34 activate the residual branch before squeeze-excitation
        self.branch_act = nn.ReLU(inplace=True) if self.relu_before_se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.branch_act(self.bn2(self.conv2(self.dropout(out))))
        out = self.drop_path(self.se(out)) + self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped in ResNeXt), 1x1 expand by 4, post-activation (He et al. 2015, Fig. 5)."""

    expansion = 4
    preact = False
    se_divisor = 8
    stride_in_1x1 = False  # v1.5, torchvision's: the stride sits on the 3x3
    reduce_fraction = 1.0  # output of the first 1x1 as a fraction of the 3x3's width

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        width = int(planes * width_per_group / 64) * groups  # ResNeXt's C x d; 2 x planes in wide_resnet50_2
        reduced = int(width * self.reduce_fraction)
        stride1, stride3 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, reduced, stride1)
        self.bn1 = nn.BatchNorm2d(reduced)
        self.conv2 = conv3x3(reduced, width, stride3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.se = _se(planes * self.expansion, se, self.se_divisor)
        self.drop_path = DropPath(drop_path)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.dropout(out)))
        out = self.drop_path(self.se(out)) + self.downsample(x)
        return self.relu(out)


class BottleneckV1(Bottleneck):
    """The paper's bottleneck (v1): a downsampling block carries its stride on the first 1x1."""

    stride_in_1x1 = True


class SENetBottleneck(Bottleneck):
    """SENet-154's bottleneck (Hu et al. 2018, appendix): the first 1x1 gives half the 3x3's width."""

    reduce_fraction = 0.5


# The SE paper's released (Caffe) models, as timm's legacy_se* ports keep them: SE-ResNet's downsampling
# bottleneck strides on its first 1x1 (the v1 bottleneck), SE-ResNeXt's and SENet-154's on the 3x3; squeeze widths
# channels // 16 without rounding. Their stem pool is ResNet's "ceil" pool (see STEM_POOLS).
class LegacySEBasicBlock(BasicBlock):
    se_divisor = 1
    relu_before_se = True  # timm's own SE-ResNet-18/34 in this layout (the paper released no such depths)


class LegacySEBottleneck(BottleneckV1):
    se_divisor = 1


class LegacySEResNeXtBottleneck(Bottleneck):
    se_divisor = 1


class PreActBlock(nn.Module):
    """Two 3x3 convolutions, pre-activation (He et al. 2016, Fig. 1b): BN-ReLU-conv, BN-ReLU-conv, add.
    With `dropout` it is the WRN block: dropout between the two convolutions (Zagoruyko & Komodakis, sec. 2.4)."""

    expansion = 1
    preact = True
    se_divisor = 8

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise UserError("basic blocks take groups=1 and width_per_group=64 only; use a bottleneck block")
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.se = _se(planes, se, self.se_divisor)
        self.drop_path = DropPath(drop_path)
        self.project = isinstance(downsample, Projection)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        # a projection sees the pre-activated input (as in the WRN and pre-activation code); an identity sees x
        shortcut = self.downsample(out) if self.project else self.downsample(x)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return self.drop_path(self.se(out)) + shortcut


class PreActBottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4, each after BN-ReLU (He et al. 2016, ResNet-164/1001)."""

    expansion = 4
    preact = True
    se_divisor = 8

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.se = _se(planes * self.expansion, se, self.se_divisor)
        self.drop_path = DropPath(drop_path)
        self.project = isinstance(downsample, Projection)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = self.downsample(out) if self.project else self.downsample(x)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.dropout(self.relu(self.bn3(out))))
        return self.drop_path(self.se(out)) + shortcut


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBlock] | type[PreActBottleneck]


def _check(shortcut: str, drop_path_rate: float) -> None:
    if shortcut not in SHORTCUTS:
        raise UserError(f"shortcut must be one of {', '.join(SHORTCUTS)}, not {shortcut!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise UserError(f"drop_path_rate must be in [0, 1), not {drop_path_rate}")


def make_stages(
    block: Block,
    in_channels: int,
    planes: tuple[int, ...],
    layers: list[int],
    strides: tuple[int, ...],
    shortcut: str = "B",
    shortcut_kernel: int = 1,
    drop_path_rate: float = 0.0,
    **block_kwargs,
) -> list[nn.Sequential]:
    """The stages of a residual network, one nn.Sequential of blocks each. Pre-activation networks end the last
    stage with the BN-ReLU that follows the last addition (He et al. 2016, Fig. 1b and sec. 4.1)."""
    total, index, stages = sum(layers), 0, []
    for stage_planes, count, stride in zip(planes, layers, strides):
        blocks = []
        for i in range(count):
            index += 1
            s = stride if i == 0 else 1
            out_channels = stage_planes * block.expansion
            downsample = make_shortcut(shortcut, in_channels, out_channels, s, block.preact, shortcut_kernel)
            drop_path = drop_path_rate * index / total  # Huang et al. 2016, eq. 4
            blocks.append(block(in_channels, stage_planes, s, downsample, drop_path=drop_path, **block_kwargs))
            in_channels = out_channels
        stages.append(nn.Sequential(*blocks))
    if block.preact:
        stages[-1].add_module("norm", nn.BatchNorm2d(in_channels))
        stages[-1].add_module("act", nn.ReLU(inplace=True))
    return stages


def _stem(kind: str, in_chans: int, small_input: bool) -> tuple[nn.Module, int]:
    """The first convolution(s) and their output width."""
    if kind not in STEMS:
        raise UserError(f"stem must be one of {', '.join(STEMS)}, not {kind!r}")
    stride = 1 if small_input else 2
    if kind == "deep":  # SENet-154: three 3x3 convolutions in place of the 7x7 (the last one's BN is bn1)
        convs = nn.Sequential(
            conv3x3(in_chans, 64, stride), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            conv3x3(64, 128),
        )  # fmt: skip
        return convs, 128
    if small_input:  # 32x32 images: a 3x3 stride-1 convolution (and no max-pool) keeps 4x4 maps at the end
        return conv3x3(in_chans, 64), 64
    return nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False), 64




class ResNet(ZooModel):
    """A residual network on ImageNet-sized inputs: stem, conv2_x..conv5_x as layer1..layer4, pool, fc.

    Args:
        block: BasicBlock, Bottleneck (v1.5), BottleneckV1, SENetBottleneck, PreActBlock or PreActBottleneck.
        layers: blocks per stage (He et al. 2015, Table 1).
        groups: cardinality C of the grouped 3x3 (ResNeXt).
        width_per_group: d, channels per group at the first stage; 128 gives wide_resnet50_2's 2x width.
        stem: "7x7" (7x7 stride-2 convolution) or "deep" (SENet-154's three 3x3 convolutions), then 3x3 max-pool.
        stem_pool: "pad" (torchvision's) or "ceil" (Caffe's), see STEM_POOLS.
        shortcut: "A", "B" or "C" (He et al. 2015, sec. 3.3).
        shortcut_kernel: kernel size of the stride-2 projections (3 in SENet-154).
        se: squeeze-and-excitation on every residual branch.
        small_input: 3x3 stride-1 stem and no max-pool, for 32x32 images.
        dropout: before the classifier. block_dropout: between the convolutions of every block.
        drop_path_rate: stochastic depth, the drop probability of the last block.
    """

    classifier_path = "fc"
    stage_names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    cam_layer = "layer4"

    def __init__(
        self,
        block: Block,
        layers: list[int],
        groups: int = 1,
        width_per_group: int = 64,
        stem: str = "7x7",
        stem_pool: str = "pad",
        shortcut: str = "B",
        shortcut_kernel: int = 1,
        se: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        _check(shortcut, drop_path_rate)
        self.conv1, width = _stem(stem, in_chans, small_input)
        # pre-activation: the first block's BN-ReLU follows conv1
        self.bn1 = nn.Identity() if block.preact else nn.BatchNorm2d(width)
        self.relu = nn.Identity() if block.preact else nn.ReLU(inplace=True)
        if stem_pool not in STEM_POOLS:
            raise UserError(f"stem_pool must be one of {', '.join(STEM_POOLS)}, not {stem_pool!r}")
        self.maxpool = nn.Identity() if small_input else STEM_POOLS[stem_pool]()
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(
            block, width, IMAGENET_PLANES, layers, strides=(1, 2, 2, 2), shortcut=shortcut,
            shortcut_kernel=shortcut_kernel, drop_path_rate=drop_path_rate,
            groups=groups, width_per_group=width_per_group, se=se, dropout=block_dropout,
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.num_classes, self.num_features = num_classes, IMAGENET_PLANES[-1] * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self.apply(partial(init_weights, linear_std=None))  # torchvision's

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


class CifarResNet(ZooModel):
    """A residual network for 32x32 inputs: a 3x3 stem, three stages on the 32x32, 16x16 and 8x8 maps, pool, fc.

    Args:
        block, layers, groups, width_per_group, shortcut, se, dropout, block_dropout, drop_path_rate: as in ResNet.
        planes: 3x3 filters of each stage (16, 32, 64 in He et al. 2015; k times that in WRN-d-k).
        stem_width: filters of the stem convolution (16; 64 in ResNeXt-29).
    """

    classifier_path = "fc"
    stage_names = ("stem", "layer1", "layer2", "layer3")
    cam_layer = "layer3"

    def __init__(
        self,
        block: Block,
        layers: list[int],
        planes: tuple[int, int, int] = CIFAR_PLANES,
        stem_width: int = 16,
        groups: int = 1,
        width_per_group: int = 64,
        shortcut: str = "B",
        se: bool = False,
        num_classes: int = 10,
        in_chans: int = 3,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        _check(shortcut, drop_path_rate)
        post = [] if block.preact else [nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(conv3x3(in_chans, stem_width), *post)
        self.layer1, self.layer2, self.layer3 = make_stages(
            block, stem_width, planes, layers, strides=(1, 2, 2), shortcut=shortcut, drop_path_rate=drop_path_rate,
            groups=groups, width_per_group=width_per_group, se=se, dropout=block_dropout,
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.num_classes, self.num_features = num_classes, planes[-1] * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self.apply(partial(init_weights, linear_std=None))  # torchvision's

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


CIFAR = {"input_size": (3, 32, 32), "num_classes": 10}
register_resnet = partial(register_model, "ResNet", RESNET)
register_preact = partial(register_model, "Pre-activation ResNet", PREACT)
register_wrn = partial(register_model, "Wide ResNet", WRN)
register_resnext = partial(register_model, "ResNeXt", RESNEXT)
register_senet = partial(register_model, "SENet", SENET)


@register_resnet(small_input=True)
def resnet18(**kwargs) -> ResNet:
    """ResNet-18, torchvision-compatible."""
    return ResNet(BasicBlock, LAYERS[18], **kwargs)


@register_resnet(small_input=True)
def resnet34(**kwargs) -> ResNet:
    """ResNet-34, torchvision-compatible."""
    return ResNet(BasicBlock, LAYERS[34], **kwargs)


@register_resnet(small_input=True)
def resnet50(**kwargs) -> ResNet:
    """ResNet-50 v1.5 (stride on the 3x3), torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[50], **kwargs)


@register_resnet(small_input=True)
def resnet101(**kwargs) -> ResNet:
    """ResNet-101 v1.5, torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[101], **kwargs)


@register_resnet(small_input=True)
def resnet152(**kwargs) -> ResNet:
    """ResNet-152 v1.5, torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[152], **kwargs)


@register_resnet(small_input=True)
def resnet50_v1(**kwargs) -> ResNet:
    """ResNet-50 as in the paper: the stride of a downsampling bottleneck on its first 1x1."""
    return ResNet(BottleneckV1, LAYERS[50], **kwargs)


@register_resnet(**CIFAR)
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (sec. 4.2, n=3), option A shortcuts, 0.27M params."""
    return CifarResNet(BasicBlock, [CIFAR_N[20]] * 3, shortcut="A", **kwargs)


@register_resnet(**CIFAR)
def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (sec. 4.2, n=5), option A shortcuts, 0.46M params."""
    return CifarResNet(BasicBlock, [CIFAR_N[32]] * 3, shortcut="A", **kwargs)


@register_resnet(**CIFAR)
def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR (sec. 4.2, n=7), option A shortcuts, 0.66M params."""
    return CifarResNet(BasicBlock, [CIFAR_N[44]] * 3, shortcut="A", **kwargs)


@register_resnet(**CIFAR)
def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (sec. 4.2, n=9), option A shortcuts, 0.85M params."""
    return CifarResNet(BasicBlock, [CIFAR_N[56]] * 3, shortcut="A", **kwargs)


@register_resnet(**CIFAR)
def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR (sec. 4.2, n=18), option A shortcuts, 1.7M params."""
    return CifarResNet(BasicBlock, [CIFAR_N[110]] * 3, shortcut="A", **kwargs)


@register_resnet(**CIFAR)
def resnet1202(**kwargs) -> CifarResNet:
    """ResNet-1202 for CIFAR (sec. 4.2, n=200), option A shortcuts, 19.4M params."""
    return CifarResNet(BasicBlock, [CIFAR_N[1202]] * 3, shortcut="A", **kwargs)


@register_preact(small_input=True)
def preact_resnet18(**kwargs) -> ResNet:
    """Pre-activation ResNet-18."""
    return ResNet(PreActBlock, LAYERS[18], **kwargs)


@register_preact(small_input=True)
def preact_resnet34(**kwargs) -> ResNet:
    """Pre-activation ResNet-34."""
    return ResNet(PreActBlock, LAYERS[34], **kwargs)


@register_preact(small_input=True)
def preact_resnet50(**kwargs) -> ResNet:
    """Pre-activation ResNet-50 (bottlenecks)."""
    return ResNet(PreActBottleneck, LAYERS[50], **kwargs)


@register_preact(**CIFAR)
def preact_resnet164(**kwargs) -> CifarResNet:
    """Pre-activation ResNet-164 for CIFAR (bottlenecks, n=18), 1.7M params."""
    return CifarResNet(PreActBottleneck, [PREACT_CIFAR_N[164]] * 3, **kwargs)


@register_preact(**CIFAR)
def preact_resnet1001(**kwargs) -> CifarResNet:
    """Pre-activation ResNet-1001 for CIFAR (bottlenecks, n=111), 10.2M params."""
    return CifarResNet(PreActBottleneck, [PREACT_CIFAR_N[1001]] * 3, **kwargs)


@register_wrn(small_input=True)
def wide_resnet50_2(**kwargs) -> ResNet:
    """Wide ResNet-50-2, torchvision-compatible: ResNet-50 with bottleneck 3x3s twice as wide."""
    return ResNet(Bottleneck, LAYERS[50], width_per_group=128, **kwargs)


@register_wrn(small_input=True)
def wide_resnet101_2(**kwargs) -> ResNet:
    """Wide ResNet-101-2, torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[101], width_per_group=128, **kwargs)


@register_wrn(**CIFAR)
def wrn16_4(**kwargs) -> CifarResNet:
    """WRN-16-4 for CIFAR (pre-activation basic blocks, 64/128/256 filters), 2.7M params."""
    return CifarResNet(PreActBlock, [WRN_N[16]] * 3, tuple(4 * p for p in CIFAR_PLANES), **kwargs)


@register_wrn(**CIFAR)
def wrn28_10(**kwargs) -> CifarResNet:
    """WRN-28-10 for CIFAR (pre-activation basic blocks, 160/320/640 filters), 36.5M params."""
    return CifarResNet(PreActBlock, [WRN_N[28]] * 3, tuple(10 * p for p in CIFAR_PLANES), **kwargs)


@register_wrn(**CIFAR)
def wrn40_4(**kwargs) -> CifarResNet:
    """WRN-40-4 for CIFAR (pre-activation basic blocks, 64/128/256 filters), 8.9M params."""
    return CifarResNet(PreActBlock, [WRN_N[40]] * 3, tuple(4 * p for p in CIFAR_PLANES), **kwargs)


@register_resnext(small_input=True)
def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d, torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[50], groups=32, width_per_group=4, **kwargs)


@register_resnext(small_input=True)
def resnext101_32x8d(**kwargs) -> ResNet:
    """ResNeXt-101 32x8d, torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[101], groups=32, width_per_group=8, **kwargs)


@register_resnext(small_input=True)
def resnext101_64x4d(**kwargs) -> ResNet:
    """ResNeXt-101 64x4d, torchvision-compatible."""
    return ResNet(Bottleneck, LAYERS[101], groups=64, width_per_group=4, **kwargs)


@register_resnext(**CIFAR)
def resnext29_8x64d(**kwargs) -> CifarResNet:
    """ResNeXt-29 8x64d for CIFAR (sec. 5.3), 34.4M params."""
    return CifarResNet(Bottleneck, [3, 3, 3], RESNEXT29_PLANES, stem_width=64, groups=8, width_per_group=64, **kwargs)


@register_resnext(**CIFAR)
def resnext29_16x64d(**kwargs) -> CifarResNet:
    """ResNeXt-29 16x64d for CIFAR (sec. 5.3), 68.1M params."""
    return CifarResNet(Bottleneck, [3, 3, 3], RESNEXT29_PLANES, stem_width=64, groups=16, width_per_group=64, **kwargs)


@register_senet(small_input=True)
def se_resnet18(**kwargs) -> ResNet:
    """SE-ResNet-18 (timm's seresnet18 layout)."""
    return ResNet(BasicBlock, LAYERS[18], se=True, **kwargs)


@register_senet(small_input=True)
def se_resnet34(**kwargs) -> ResNet:
    """SE-ResNet-34 (timm's seresnet34 layout)."""
    return ResNet(BasicBlock, LAYERS[34], se=True, **kwargs)


@register_senet(small_input=True)
def se_resnet50(**kwargs) -> ResNet:
    """SE-ResNet-50, stride on the 3x3 (timm's seresnet50 layout)."""
    return ResNet(Bottleneck, LAYERS[50], se=True, **kwargs)


@register_senet(small_input=True)
def se_resnet101(**kwargs) -> ResNet:
    """SE-ResNet-101, stride on the 3x3."""
    return ResNet(Bottleneck, LAYERS[101], se=True, **kwargs)


@register_senet(small_input=True)
def se_resnet152(**kwargs) -> ResNet:
    """SE-ResNet-152, stride on the 3x3."""
    return ResNet(Bottleneck, LAYERS[152], se=True, **kwargs)


@register_senet(small_input=True)
def se_resnext50_32x4d(**kwargs) -> ResNet:
    """SE-ResNeXt-50 32x4d."""
    return ResNet(Bottleneck, LAYERS[50], groups=32, width_per_group=4, se=True, **kwargs)


@register_senet(small_input=True)
def senet154(**kwargs) -> ResNet:
    """SENet-154: SE 64x4d ResNeXt-152 with halved 1x1s, a 3x3-conv stem, 3x3 projections, dropout 0.2."""
    return ResNet(SENetBottleneck, LAYERS[152], **{**SENET154, **kwargs})


# The SE paper's released models (timm's legacy_se*; see LegacySEBottleneck): they load timm's legacy files.
LEGACY = {"se": True, "stem_pool": "ceil"}


@register_senet()
def legacy_se_resnet18(**kwargs) -> ResNet:
    """SE-ResNet-18 as timm's legacy_seresnet18: ceil-mode stem pool, squeeze widths channels // 16, a ReLU
    before squeeze-excitation."""
    return ResNet(LegacySEBasicBlock, LAYERS[18], **{**LEGACY, **kwargs})


@register_senet()
def legacy_se_resnet34(**kwargs) -> ResNet:
    """SE-ResNet-34 as timm's legacy_seresnet34: ceil-mode stem pool, squeeze widths channels // 16, a ReLU
    before squeeze-excitation."""
    return ResNet(LegacySEBasicBlock, LAYERS[34], **{**LEGACY, **kwargs})


@register_senet()
def legacy_se_resnet50(**kwargs) -> ResNet:
    """SE-ResNet-50 as the SE paper released it (timm's legacy_seresnet50): stride on the first 1x1, ceil pool."""
    return ResNet(LegacySEBottleneck, LAYERS[50], **{**LEGACY, **kwargs})


@register_senet()
def legacy_se_resnet101(**kwargs) -> ResNet:
    """SE-ResNet-101 as the SE paper released it (timm's legacy_seresnet101)."""
    return ResNet(LegacySEBottleneck, LAYERS[101], **{**LEGACY, **kwargs})


@register_senet()
def legacy_se_resnet152(**kwargs) -> ResNet:
    """SE-ResNet-152 as the SE paper released it (timm's legacy_seresnet152)."""
    return ResNet(LegacySEBottleneck, LAYERS[152], **{**LEGACY, **kwargs})


@register_senet()
def legacy_se_resnext50_32x4d(**kwargs) -> ResNet:
    """SE-ResNeXt-50 32x4d as the SE paper released it (timm's legacy_seresnext50_32x4d): ceil-mode stem pool."""
    return ResNet(LegacySEResNeXtBottleneck, LAYERS[50], groups=32, width_per_group=4, **{**LEGACY, **kwargs})


@register_senet()
def legacy_se_resnext101_32x4d(**kwargs) -> ResNet:
    """SE-ResNeXt-101 32x4d as the SE paper released it (timm's legacy_seresnext101_32x4d)."""
    return ResNet(LegacySEResNeXtBottleneck, LAYERS[101], groups=32, width_per_group=4, **{**LEGACY, **kwargs})


@register_senet()
def legacy_senet154(**kwargs) -> ResNet:
    """SENet-154 as the SE paper released it (timm's legacy_senet154): senet154 with a ceil-mode stem pool."""
    return ResNet(SENetBottleneck, LAYERS[152], **{**SENET154, "stem_pool": "ceil", **kwargs})
