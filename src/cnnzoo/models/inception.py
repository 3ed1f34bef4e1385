"""The later Inception networks: BN-Inception, Inception-v3, Inception-v4 and Inception-ResNet-v2.

- ``inception_bn``: Ioffe & Szegedy (2015), "Batch normalization: accelerating deep network training by reducing
  internal covariate shift", arXiv:1502.03167, the network of Figure 5 (often called Inception v2). GoogLeNet
  with batch normalisation after every convolution, each 5x5 replaced by two stacked 3x3 ("double 3x3"), three
  28x28 modules instead of two, average or max pooling inside the modules, and the stage transitions done
  inside modules 3c and 4e (stride-2 convolutions beside a stride-2 max pool whose output passes through).
  Section 4.2.1 removes dropout and local response normalisation, so ``dropout`` defaults to 0. The widths are
  the table's columns; they give modules 4c-4d 608 channels and 4e 1056 (the table's "576" and "1024" do not
  add up; the Caffe-ported BN-Inception models follow the columns too). No auxiliary classifiers (the paper does not
  describe them). 11,285,224 parameters at 1000 classes; the paper's text quotes 13.6M, which the table's
  widths do not reproduce.
- ``inception_v3``: Szegedy, Vanhoucke, Ioffe, Shlens & Wojna (2015), "Rethinking the Inception architecture for
  computer vision", arXiv:1512.00567, exactly torchvision's ``inception_v3`` (TF-slim's widths and the
  released model's stem: 3x3/2 32, 3x3 32, 3x3 64, 3x3/2 max pool, 1x1 80, 3x3 192, 3x3/2 max pool, where
  Table 1 lists three 3x3 convolutions after the first pool), so its state_dicts load strictly. 299x299 input;
  three Figure 5 modules (5x5 factorised into two 3x3; the released model keeps a 5x5 branch beside them) at
  35x35, five Figure 6 modules (7x7 factorised into 1x7 and 7x1) at 17x17, two Figure 7 modules (expanded
  filter banks) at 8x8, with the grid reductions of Figure 10 between them. One auxiliary classifier on the
  last 17x17 map (batch-normalised, section 4); in training mode with ``aux_logits=True`` the forward returns
  ``(logits, aux)``.
  27,161,264 parameters (23,834,568 with ``aux_logits=False``). ``transform_input`` defaults to False.
- ``inception_v4`` and ``inception_resnet_v2``: Szegedy, Ioffe, Vanhoucke & Alemi (2016), "Inception-v4,
  Inception-ResNet and the impact of residual connections on learning", arXiv:1602.07261. Both follow the
  released TF-slim checkpoints as ported by timm (module names too, so timm state_dicts load; BatchNorm eps
  1e-3; 42,679,816 and 55,843,464 parameters). Inception-v4 is the paper's Figures 3-9. Inception-ResNet-v2
  departs from the paper's figures as the released model does: the stem is Inception-v3's plus a mixed 5b
  module (not Figure 3), and its residual stages are 320/1088/2080 channels wide (the figures' 384/1154/2048 do
  not match the released weights). Residuals are scaled down before the addition (section 3.3; TF-slim's
  0.17, 0.10, 0.20); the last block has no ReLU. Dropout defaults to the paper's 0.2 (keep 0.8).

``small_input=True`` (all four): the first convolution becomes a 3x3 of stride 1 and padding 1 and the stem's
other stride-2 steps (max pools, or Inception-v4's stride-2 mixed stem blocks) go or become stride 1, so that a 32x32
image ends in an 8x8 (inception_bn), 6x6 (v3, Inception-ResNet-v2) or 5x5 (v4) map instead of collapsing.
Inception-v3's auxiliary head then pools adaptively to 5x5 (its 5x5/3 pool would leave a 3x3 map for its
unpadded 5x5 convolution).

Every ReLU is an nn.ReLU module and every pool a module (not functional), so guided backprop and the summary's
receptive-field bookkeeping see them; neither changes the state_dict.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ConvBNAct
from cnnzoo.models.base import ZooModel
from cnnzoo.models.googlenet import BasicConv2d, init_kaiming, transform_input
from cnnzoo.registry import Paper, register_model

__all__ = ["BNInception", "Inception3", "InceptionV4", "InceptionResNetV2", "BNInceptionRow", "ReductionFilters"]

BATCHNORM = Paper("Batch normalization: accelerating deep network training by reducing internal covariate shift",
                  "Ioffe, Szegedy", 2015, "1502.03167")
RETHINKING = Paper("Rethinking the Inception architecture for computer vision",
                   "Szegedy, Vanhoucke, Ioffe, Shlens, Wojna", 2015, "1512.00567")
INCEPTION_V4 = Paper("Inception-v4, Inception-ResNet and the impact of residual connections on learning",
                     "Szegedy, Ioffe, Vanhoucke, Alemi", 2016, "1602.07261")


class BNInceptionRow(NamedTuple):
    """One inception row of the BN-Inception table (Ioffe & Szegedy 2015, Figure 5)."""

    ch1x1: int  # #1x1 (0: no 1x1 branch)
    ch3x3red: int  # #3x3 reduce
    ch3x3: int  # #3x3
    dbl3x3red: int  # double #3x3 reduce
    dbl3x3: int  # double #3x3
    pool: str  # Pool: "avg" or "max"
    pool_proj: int  # +proj (0: "pass through", the pooled input itself)
    stride: int  # 2 for the modules that halve the grid (3c, 4e)

    def out_channels(self, in_channels: int) -> int:
        return self.ch1x1 + self.ch3x3 + self.dbl3x3 + (self.pool_proj or in_channels)


# BN-Inception, Figure 5: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, proj, stride.
# Stages 3, 4, 5 start at 28x28, 14x14 (after 3c) and 7x7 (after 4e); modules are named inception{stage}{letter}.
BN_INCEPTION_STAGES: dict[int, list[BNInceptionRow]] = {
    3: [
        BNInceptionRow(64, 64, 64, 64, 96, "avg", 32, 1),  # 3a: 256
        BNInceptionRow(64, 64, 96, 64, 96, "avg", 64, 1),  # 3b: 320
        BNInceptionRow(0, 128, 160, 64, 96, "max", 0, 2),  # 3c: 576, 14x14
    ],
    4: [
        BNInceptionRow(224, 64, 96, 96, 128, "avg", 128, 1),  # 4a: 576
        BNInceptionRow(192, 96, 128, 96, 128, "avg", 128, 1),  # 4b: 576
        BNInceptionRow(160, 128, 160, 128, 160, "avg", 128, 1),  # 4c: 608
        BNInceptionRow(96, 128, 192, 160, 192, "avg", 128, 1),  # 4d: 608
        BNInceptionRow(0, 128, 192, 192, 256, "max", 0, 2),  # 4e: 1056, 7x7
    ],
    5: [
        BNInceptionRow(352, 192, 320, 160, 224, "avg", 128, 1),  # 5a: 1024
        BNInceptionRow(352, 192, 320, 192, 224, "max", 128, 1),  # 5b: 1024
    ],
}


class V3Row(NamedTuple):
    """One mixed module of Inception-v3, under torchvision's (TF-slim's) module name."""

    name: str
    block: str  # A: Figure 5, B: grid reduction 35->17, C: Figure 6, D: grid reduction 17->8, E: Figure 7
    in_channels: int
    width: int  # A: pool projection channels; C: channels inside the factorised 7x7; 0 for B, D, E


# Inception-v3, Table 1 as released (TF-slim / torchvision): 3 x Figure 5 at 35x35, reduction, 5 x Figure 6 at
# 17x17, reduction, 2 x Figure 7 at 8x8. The auxiliary classifier reads the output of Mixed_6e.
V3_MIXED: list[V3Row] = [
    V3Row("Mixed_5b", "A", 192, 32),  # -> 256 x 35 x 35
    V3Row("Mixed_5c", "A", 256, 64),  # -> 288
    V3Row("Mixed_5d", "A", 288, 64),  # -> 288
    V3Row("Mixed_6a", "B", 288, 0),  # -> 768 x 17 x 17
    V3Row("Mixed_6b", "C", 768, 128),
    V3Row("Mixed_6c", "C", 768, 160),
    V3Row("Mixed_6d", "C", 768, 160),
    V3Row("Mixed_6e", "C", 768, 192),  # -> 768
    V3Row("Mixed_7a", "D", 768, 0),  # -> 1280 x 8 x 8
    V3Row("Mixed_7b", "E", 1280, 0),  # -> 2048
    V3Row("Mixed_7c", "E", 2048, 0),  # -> 2048
]


class ReductionFilters(NamedTuple):
    """Filter counts of the Reduction-A module (Szegedy et al. 2016, Table 1 and Figure 7)."""

    k: int  # 1x1 reduction of the double-3x3 branch
    l: int  # noqa: E741 (the paper's symbol) first 3x3 of that branch
    m: int  # its stride-2 3x3
    n: int  # the single stride-2 3x3 branch


# Inception-v4 / Inception-ResNet, Table 1: the number of filters of the Reduction-A module.
REDUCTION_A = {
    "inception_v4": ReductionFilters(192, 224, 256, 384),
    "inception_resnet_v2": ReductionFilters(256, 256, 384, 384),
}

# Inception-v4, Figure 9: stem, 4 x Inception-A, Reduction-A, 7 x Inception-B, Reduction-B, 3 x Inception-C.
V4_REPEATS = {"A": 4, "B": 7, "C": 3}


class IRv2Stage(NamedTuple):
    name: str  # timm's module name
    block: str  # Inception-ResNet-A (Block35), -B (Block17) or -C (Block8)
    repeats: int
    scale: float  # residual scaling, section 3.3


# Inception-ResNet-v2, Figure 15 as released: residual stages at 35x35, 17x17 and 8x8; a tenth, unscaled
# Inception-ResNet-C block without ReLU (timm's block8) follows the last stage.
IRV2_STAGES: list[IRv2Stage] = [
    IRv2Stage("repeat", "A", 10, 0.17),  # 320 x 35 x 35
    IRv2Stage("repeat_1", "B", 20, 0.10),  # 1088 x 17 x 17
    IRv2Stage("repeat_2", "C", 9, 0.20),  # 2080 x 8 x 8
]


# ----------------------------------------------------------------------------------------------- BN-Inception


class BNInceptionBlock(nn.Module):
    """One BN-Inception module: 1x1, 1x1 -> 3x3, 1x1 -> 3x3 -> 3x3, pool [-> 1x1 projection], concatenated."""

    def __init__(self, in_channels: int, row: BNInceptionRow):
        super().__init__()
        s = row.stride
        branches: list[nn.Module] = []
        if row.ch1x1:
            branches.append(ConvBNAct(in_channels, row.ch1x1, 1))
        reduce3x3 = ConvBNAct(in_channels, row.ch3x3red, 1)
        branches.append(nn.Sequential(reduce3x3, ConvBNAct(row.ch3x3red, row.ch3x3, 3, s)))
        branches.append(
            nn.Sequential(
                ConvBNAct(in_channels, row.dbl3x3red, 1),
                ConvBNAct(row.dbl3x3red, row.dbl3x3, 3),
                ConvBNAct(row.dbl3x3, row.dbl3x3, 3, s),
            )
        )
        # Padding 1 (not Caffe's ceil mode) keeps the pool's grid equal to the stride-2 convs' at odd sizes too.
        pool = nn.AvgPool2d(3, s, 1) if row.pool == "avg" else nn.MaxPool2d(3, s, 1)
        branches.append(nn.Sequential(pool, ConvBNAct(in_channels, row.pool_proj, 1)) if row.pool_proj else pool)
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for branch in self.branches:  # a loop, not a comprehension, for TorchScript
            outs.append(branch(x))
        return torch.cat(outs, 1)


class BNInception(ZooModel):
    """BN-Inception (Inception v2) of Ioffe & Szegedy (2015), Figure 5."""

    classifier_path = "fc"
    stage_names = ("conv1", "conv2", "conv3") + tuple(
        f"inception{stage}{'abcde'[i]}" for stage, rows in BN_INCEPTION_STAGES.items() for i in range(len(rows))
    )
    cam_layer = "inception5b"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.0, small_input: bool = False):
        super().__init__()
        stem_pool = nn.Identity if small_input else partial(nn.MaxPool2d, 3, stride=2, ceil_mode=True)
        self.conv1 = ConvBNAct(in_chans, 64, 3) if small_input else ConvBNAct(in_chans, 64, 7, stride=2)
        self.maxpool1 = stem_pool()
        self.conv2 = ConvBNAct(64, 64, 1)  # the stem's "#3x3 reduce"
        self.conv3 = ConvBNAct(64, 192, 3)
        self.maxpool2 = stem_pool()
        channels = 192
        for stage, rows in BN_INCEPTION_STAGES.items():
            for i, row in enumerate(rows):
                setattr(self, f"inception{stage}{'abcde'[i]}", BNInceptionBlock(channels, row))
                channels = row.out_channels(channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.num_classes, self.num_features = num_classes, channels
        self.apply(init_kaiming)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))  # N x 192 x 28 x 28
        x = self.inception3c(self.inception3b(self.inception3a(x)))  # N x 576 x 14 x 14
        x = self.inception4c(self.inception4b(self.inception4a(x)))
        x = self.inception4e(self.inception4d(x))  # N x 1056 x 7 x 7
        return self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# ----------------------------------------------------------------------------------------------- Inception-v3


class InceptionA(nn.Module):
    """Figure 5 as released (35x35): 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; 3x3 average pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(self.pool(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Figure 10): stride-2 3x3; 1x1 -> 3x3 -> stride-2 3x3; stride-2 max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, self.pool(x)], 1)


class InceptionC(nn.Module):
    """Figure 6 (17x17): 1x1; 1x1 -> 1x7 -> 7x1; 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7; average pool -> 1x1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        b7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(b7dbl)))
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> stride-2 3x3; 1x1 -> 1x7 -> 7x1 -> stride-2 3x3; stride-2 max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, self.pool(x)], 1)


class InceptionE(nn.Module):
    """Figure 7 (8x8): 1x1; 1x1 -> (1x3 | 3x1); 1x1 -> 3x3 -> (1x3 | 3x1); average pool -> 1x1."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        return torch.cat([self.branch1x1(x), b3, b3dbl, self.branch_pool(self.pool(x))], 1)


V3_BLOCKS = {"A": InceptionA, "B": InceptionB, "C": InceptionC, "D": InceptionD, "E": InceptionE}


class InceptionAux(nn.Module):
    """Inception-v3's auxiliary classifier (section 4): 5x5/3 average pool, 1x1 conv 128, 5x5 conv 768, FC."""

    def __init__(self, in_channels: int, num_classes: int, small_input: bool = False):
        super().__init__()
        # A 13x13 small-input map would leave 3x3 for the unpadded 5x5 conv; pool it to 5x5 instead.
        self.pool = nn.AdaptiveAvgPool2d(5) if small_input else nn.AvgPool2d(5, stride=3)
        self.conv0 = BasicConv2d(in_channels, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(self.pool(x)))  # N x 768 x 1 x 1 at 17x17 input
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Inception3(ZooModel):
    """Inception-v3 as in torchvision (module names included).

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        dropout: dropout before the classifier.
        aux_logits: build the auxiliary classifier (returned in training mode only).
        transform_input: map ImageNet-normalised input to the [-1, 1] scaling of Google's ported weights.
        small_input: stride-1 first convolution and no stem max pools, for 32x32 images.
    """

    classifier_path = "fc"
    stage_names = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3") + tuple(
        row.name for row in V3_MIXED
    )
    cam_layer = "Mixed_7c"
    aux_classifiers = {"AuxLogits": "AuxLogits.fc"}
    __constants__ = ["aux_logits", "transform_input"]

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
        aux_logits: bool = True,
        transform_input: bool = False,
        small_input: bool = False,
    ):
        super().__init__()
        if transform_input and in_chans != 3:
            raise UserError("transform_input=True needs in_chans=3 (it re-normalises RGB input)")
        self.aux_logits, self.transform_input = aux_logits, transform_input
        stem_pool = nn.Identity if small_input else partial(nn.MaxPool2d, 3, stride=2)
        self.Conv2d_1a_3x3 = BasicConv2d(in_chans, 32, 3, stride=1 if small_input else 2, padding=int(small_input))
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = stem_pool()
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = stem_pool()
        for row in V3_MIXED:
            args = (row.in_channels, row.width) if row.width else (row.in_channels,)
            setattr(self, row.name, V3_BLOCKS[row.block](*args))
            if row.name == "Mixed_6e":  # torchvision registers the head here; keep its state_dict order
                self.AuxLogits = InceptionAux(768, num_classes, small_input) if aux_logits else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)
        self.num_classes, self.num_features = num_classes, 2048
        self.apply(init_kaiming)

    def _trunk(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        aux: list[torch.Tensor] = []
        if self.transform_input:
            x = transform_input(x)
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))  # N x 64 x 73 x 73
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))  # N x 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # N x 288 x 35 x 35
        x = self.Mixed_6a(x)  # N x 768 x 17 x 17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        if with_aux:
            aux.append(self.AuxLogits(x))
        x = self.Mixed_7a(x)  # N x 1280 x 8 x 8
        return self.Mixed_7c(self.Mixed_7b(x)), aux  # N x 2048 x 8 x 8

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, False)[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.dropout(self.avgpool(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training mode with the aux head returns (logits, aux); TorchScript compiles only the logits path.
        if not torch.jit.is_scripting():
            if self.training and self.aux_logits:
                return self._forward_with_aux(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def _forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, (aux,) = self._trunk(x, True)
        return self.forward_head(x), aux


# ----------------------------------------------------------------------------------------------- Inception-v4


class Mixed3a(nn.Module):
    """Figure 3, first filter concatenation: 3x3/2 max pool | 3x3/2 conv 96."""

    def __init__(self, stride: int = 2):
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=stride)
        self.conv = BasicConv2d(64, 96, 3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.maxpool(x), self.conv(x)], 1)


class Mixed4a(nn.Module):
    """Figure 3, second filter concatenation: 1x1 64 -> 3x3 96 | 1x1 64 -> 7x1 -> 1x7 -> 3x3 96."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(160, 64, 1), BasicConv2d(64, 96, 3))
        self.branch1 = nn.Sequential(
            BasicConv2d(160, 64, 1),
            BasicConv2d(64, 64, (1, 7), padding=(0, 3)),
            BasicConv2d(64, 64, (7, 1), padding=(3, 0)),
            BasicConv2d(64, 96, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x)], 1)


class Mixed5a(nn.Module):
    """Figure 3, third filter concatenation: 3x3/2 conv 192 | 3x3/2 max pool."""

    def __init__(self, stride: int = 2):
        super().__init__()
        self.conv = BasicConv2d(192, 192, 3, stride=stride)
        self.maxpool = nn.MaxPool2d(3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.maxpool(x)], 1)


class InceptionV4A(nn.Module):
    """Figure 4 (35x35): 1x1 96; 1x1 64 -> 3x3 96; 1x1 64 -> 3x3 96 -> 3x3 96; average pool -> 1x1 96."""

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(384, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        )
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(384, 96, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ReductionA(nn.Module):
    """Figure 7 (35 -> 17) with Table 1's filters: 3x3/2 n; 1x1 k -> 3x3 l -> 3x3/2 m; 3x3/2 max pool."""

    def __init__(self, in_channels: int, f: ReductionFilters):
        super().__init__()
        self.branch0 = BasicConv2d(in_channels, f.n, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(in_channels, f.k, 1), BasicConv2d(f.k, f.l, 3, padding=1), BasicConv2d(f.l, f.m, 3, stride=2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class InceptionV4B(nn.Module):
    """Figure 5 (17x17): 1x1 384; 1x1 -> 1x7 -> 7x1; 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7; average pool -> 1x1 128."""

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(1024, 384, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 192, 1),
            BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
            BasicConv2d(224, 256, (7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(1024, 192, 1),
            BasicConv2d(192, 192, (7, 1), padding=(3, 0)),
            BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
            BasicConv2d(224, 224, (7, 1), padding=(3, 0)),
            BasicConv2d(224, 256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(1024, 128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ReductionB(nn.Module):
    """Figure 8 (17 -> 8): 1x1 192 -> 3x3/2 192; 1x1 256 -> 1x7 -> 7x1 320 -> 3x3/2 320; 3x3/2 max pool."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1024, 192, 1), BasicConv2d(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 256, 1),
            BasicConv2d(256, 256, (1, 7), padding=(0, 3)),
            BasicConv2d(256, 320, (7, 1), padding=(3, 0)),
            BasicConv2d(320, 320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class InceptionV4C(nn.Module):
    """Figure 6 (8x8): 1x1 256; 1x1 384 -> (1x3 | 3x1); 1x1 384 -> 3x1 -> 1x3 -> (1x3 | 3x1); pool -> 1x1 256."""

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(1536, 256, 1)
        self.branch1_0 = BasicConv2d(1536, 384, 1)
        self.branch1_1a = BasicConv2d(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = BasicConv2d(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = BasicConv2d(1536, 384, 1)
        self.branch2_1 = BasicConv2d(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = BasicConv2d(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = BasicConv2d(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = BasicConv2d(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(1536, 256, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x1 = torch.cat([self.branch1_1a(x1), self.branch1_1b(x1)], 1)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        x2 = torch.cat([self.branch2_3a(x2), self.branch2_3b(x2)], 1)
        return torch.cat([self.branch0(x), x1, x2, self.branch3(x)], 1)


class InceptionV4(ZooModel):
    """Inception-v4 (Szegedy et al. 2016, Figure 9), with timm's module names (``features.N``, ``last_linear``)."""

    classifier_path = "last_linear"
    stage_names = tuple(f"features.{i}" for i in range(6 + sum(V4_REPEATS.values()) + 2))
    cam_layer = "features"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2, small_input: bool = False):
        super().__init__()
        s = 1 if small_input else 2  # the stem's three stride-2 steps
        features: list[nn.Module] = [
            BasicConv2d(in_chans, 32, 3, stride=s, padding=int(small_input)),  # Figure 3 stem
            BasicConv2d(32, 32, 3),
            BasicConv2d(32, 64, 3, padding=1),
            Mixed3a(s),
            Mixed4a(),
            Mixed5a(s),  # -> 384 x 35 x 35
        ]
        features += [InceptionV4A() for _ in range(V4_REPEATS["A"])]
        features += [ReductionA(384, REDUCTION_A["inception_v4"])]  # -> 1024 x 17 x 17
        features += [InceptionV4B() for _ in range(V4_REPEATS["B"])]
        features += [ReductionB()]  # -> 1536 x 8 x 8
        features += [InceptionV4C() for _ in range(V4_REPEATS["C"])]
        self.features = nn.Sequential(*features)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1536, num_classes)
        self.num_classes, self.num_features = num_classes, 1536
        self.apply(init_kaiming)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_linear(self.head_drop(torch.flatten(self.global_pool(x), 1)))


# ---------------------------------------------------------------------------------------- Inception-ResNet-v2


class Mixed5b(nn.Module):
    """The released Inception-ResNet-v2's stem module (an Inception-v3 Figure 5 module, 96/64/96/64 wide)."""

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(192, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        )
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(192, 64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block35(nn.Module):
    """Inception-ResNet-A (Figure 16, 35x35): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3, 1x1 linear, scaled residual."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(320, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(320, 32, 1), BasicConv2d(32, 48, 3, padding=1), BasicConv2d(48, 64, 3, padding=1)
        )
        self.conv2d = nn.Conv2d(128, 320, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1))
        return self.relu(out * self.scale + x)


class Block17(nn.Module):
    """Inception-ResNet-B (Figure 17, 17x17): 1x1 | 1x1 -> 1x7 -> 7x1, 1x1 linear, scaled residual."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1088, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1088, 128, 1),
            BasicConv2d(128, 160, (1, 7), padding=(0, 3)),
            BasicConv2d(160, 192, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1088, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
        return self.relu(out * self.scale + x)


class Mixed7a(nn.Module):
    """Reduction-B of Inception-ResNet-v2 (Figure 18 as released; 17 -> 8)."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, padding=1), BasicConv2d(288, 320, 3, stride=2)
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block8(nn.Module):
    """Inception-ResNet-C (Figure 19, 8x8): 1x1 | 1x1 -> 1x3 -> 3x1, 1x1 linear, scaled residual [ReLU]."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(2080, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(2080, 192, 1),
            BasicConv2d(192, 224, (1, 3), padding=(0, 1)),
            BasicConv2d(224, 256, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(448, 2080, 1)
        self.relu = nn.Identity() if no_relu else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
        return self.relu(out * self.scale + x)


IRV2_BLOCKS = {"A": Block35, "B": Block17, "C": Block8}


class InceptionResNetV2(ZooModel):
    """Inception-ResNet-v2 as released (TF-slim, timm's module names)."""

    classifier_path = "classif"
    stage_names = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a", "mixed_5b", "repeat", "mixed_6a",
                   "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b")
    cam_layer = "conv2d_7b"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2, small_input: bool = False):
        super().__init__()
        stem_pool = nn.Identity if small_input else partial(nn.MaxPool2d, 3, stride=2)
        self.conv2d_1a = BasicConv2d(in_chans, 32, 3, stride=1 if small_input else 2, padding=int(small_input))
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = stem_pool()
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.maxpool_5a = stem_pool()
        self.mixed_5b = Mixed5b()  # -> 320 x 35 x 35
        stage_a, stage_b, stage_c = (
            nn.Sequential(*[IRV2_BLOCKS[st.block](scale=st.scale) for _ in range(st.repeats)]) for st in IRV2_STAGES
        )
        self.repeat = stage_a
        self.mixed_6a = ReductionA(320, REDUCTION_A["inception_resnet_v2"])  # -> 1088 x 17 x 17
        self.repeat_1 = stage_b
        self.mixed_7a = Mixed7a()  # -> 2080 x 8 x 8
        self.repeat_2 = stage_c
        self.block8 = Block8(no_relu=True)
        self.conv2d_7b = BasicConv2d(2080, 1536, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)
        self.classif = nn.Linear(1536, num_classes)
        self.num_classes, self.num_features = num_classes, 1536
        self.apply(init_kaiming)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool_3a(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))  # N x 64 x 73 x 73
        x = self.maxpool_5a(self.conv2d_4a(self.conv2d_3b(x)))  # N x 192 x 35 x 35
        x = self.repeat(self.mixed_5b(x))  # N x 320 x 35 x 35
        x = self.repeat_1(self.mixed_6a(x))  # N x 1088 x 17 x 17
        x = self.block8(self.repeat_2(self.mixed_7a(x)))  # N x 2080 x 8 x 8
        return self.conv2d_7b(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classif(self.head_drop(torch.flatten(self.global_pool(x), 1)))


@register_model("Inception", BATCHNORM, small_input=True)
def inception_bn(**kwargs) -> BNInception:
    """BN-Inception (Inception v2): GoogLeNet with batch norm and double 3x3 in place of 5x5 (Figure 5)."""
    return BNInception(**kwargs)


@register_model("Inception", RETHINKING, input_size=(3, 299, 299), small_input=True)
def inception_v3(**kwargs) -> Inception3:
    """Inception-v3 as in torchvision: factorised 7x7 and 5x5 convolutions, one auxiliary classifier."""
    return Inception3(**kwargs)


@register_model("Inception", INCEPTION_V4, input_size=(3, 299, 299), small_input=True)
def inception_v4(**kwargs) -> InceptionV4:
    """Inception-v4: pure Inception blocks A/B/C with reduction modules, as released (timm's names)."""
    return InceptionV4(**kwargs)


@register_model("Inception", INCEPTION_V4, input_size=(3, 299, 299), small_input=True)
def inception_resnet_v2(**kwargs) -> InceptionResNetV2:
    """Inception-ResNet-v2: Inception blocks with scaled residual connections, as released (timm's names)."""
    return InceptionResNetV2(**kwargs)
