"""MobileNet V1, V2 and V3.

- V1: Howard et al. (2017), "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
  arXiv:1704.04861. Table 1: a 3x3 stem, then 13 depthwise separable convolutions (depthwise 3x3 and pointwise 1x1,
  each with BN and ReLU), average pool, FC. The width multiplier alpha thins every layer (section 3.3).
  4,231,976 parameters at alpha=1 (timm's mobilenetv1_100).
- V2: Sandler et al. (2018), "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381.
  Table 2, with torchvision's layout so that its weights load (3,504,872 parameters).
- V3: Howard et al. (2019), "Searching for MobileNetV3", arXiv:1905.02244. Tables 1 (large) and 2 (small), with
  hard-swish, SE gated by hard-sigmoid and TensorFlow's BN settings, as torchvision (5,483,032 / 2,542,856).

``small_input=True`` makes the stem stride 1 for 32x32 images (the network then downsamples 16x, not 32x).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.layers import ConvBNAct, InvertedResidual, init_weights, make_divisible, set_batchnorm
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

MOBILENET_V1 = Paper(
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    "Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam",
    2017,
    "1704.04861",
)
MOBILENET_V2 = Paper(
    "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    "Sandler, Howard, Zhu, Zhmoginov, Chen",
    2018,
    "1801.04381",
)
MOBILENET_V3 = Paper(
    "Searching for MobileNetV3",
    "Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le, Adam",
    2019,
    "1905.02244",
)

# MobileNetV1, Table 1, after the stem (conv 3x3/2, 32): depthwise separable blocks as channels c, repeats n,
# stride s of the first. Table 1 prints "s2" for the last depthwise at 7x7, a typo (its output stays 7x7).
V1_STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]

# MobileNetV2, Table 2, after the stem (conv 3x3/2, 32): expansion t, channels c, repeats n, stride s.
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class Bneck(NamedTuple):
    """One row of MobileNetV3's Tables 1 and 2: a bottleneck block."""

    kernel: int
    expansion: int  # "exp size": channels of the depthwise layer
    out: int
    se: bool
    act: str  # "relu" (RE) or "hswish" (HS)
    stride: int


RE, HS = "relu", "hswish"

# MobileNetV3-Large, Table 1 (stem conv 3x3/2, 16, h-swish; head conv 1x1 960, pool, FC 1280, FC).
V3_LARGE = [
    Bneck(3, 16, 16, False, RE, 1),
    Bneck(3, 64, 24, False, RE, 2),
    Bneck(3, 72, 24, False, RE, 1),
    Bneck(5, 72, 40, True, RE, 2),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(3, 240, 80, False, HS, 2),
    Bneck(3, 200, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 480, 112, True, HS, 1),
    Bneck(3, 672, 112, True, HS, 1),
    Bneck(5, 672, 160, True, HS, 2),
    Bneck(5, 960, 160, True, HS, 1),
    Bneck(5, 960, 160, True, HS, 1),
]

# MobileNetV3-Small, Table 2 (stem conv 3x3/2, 16, h-swish; head conv 1x1 576, pool, FC 1024, FC).
V3_SMALL = [
    Bneck(3, 16, 16, True, RE, 2),
    Bneck(3, 72, 24, False, RE, 2),
    Bneck(3, 88, 24, False, RE, 1),
    Bneck(5, 96, 40, True, HS, 2),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 120, 48, True, HS, 1),
    Bneck(5, 144, 48, True, HS, 1),
    Bneck(5, 288, 96, True, HS, 2),
    Bneck(5, 576, 96, True, HS, 1),
    Bneck(5, 576, 96, True, HS, 1),
]




class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1's depthwise separable convolution (Fig. 3): depthwise 3x3, BN, ReLU, pointwise 1x1, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


class MobileNetV1(ZooModel):
    """MobileNetV1 with width multiplier alpha (section 3.3)."""

    stage_names = tuple(f"features.{i}" for i in range(len(V1_STAGES) + 1))
    cam_layer = "features"
    classifier_path = "classifier"
    channels_last = True

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        small_input: bool = False,
    ):
        super().__init__()
        channels = make_divisible(32 * width_mult)
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, 1 if small_input else 2)]
        for c, n, s in V1_STAGES:
            out = make_divisible(c * width_mult)
            blocks = [DepthwiseSeparable(channels if i == 0 else out, out, s if i == 0 else 1) for i in range(n)]
            features.append(nn.Sequential(*blocks))
            channels = out
        self.features = nn.Sequential(*features)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        self.num_classes, self.num_features = num_classes, channels
        self.apply(init_weights)  # torchvision's: He fan_out, N(0, 0.01) linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(x.mean((2, 3))))


class MobileNetV2(ZooModel):
    """MobileNetV2 (Table 2) with width multiplier; torchvision's module names."""

    stage_names = tuple(f"features.{i}" for i in range(sum(n for _, _, n, _ in V2_STAGES) + 2))
    cam_layer = "features"
    classifier_path = "classifier.1"
    channels_last = True

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
        small_input: bool = False,
    ):
        super().__init__()
        channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))  # the paper never thins the last layer
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act="relu6")]
        for t, c, n, s in V2_STAGES:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, out, round(channels * t), s if i == 0 else 1))
                channels = out
        features.append(ConvBNAct(channels, last_channels, 1, act="relu6"))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        self.num_classes, self.num_features = num_classes, last_channels
        self.apply(init_weights)  # torchvision's: He fan_out, N(0, 0.01) linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))


class MobileNetV3(ZooModel):
    """MobileNetV3 from a table of bottlenecks (Tables 1 and 2); torchvision's module names and BN settings."""

    cam_layer = "features"
    classifier_path = "classifier.3"
    channels_last = True

    def __init__(
        self,
        table: list[Bneck],
        head_channels: int,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
        small_input: bool = False,
    ):
        super().__init__()
        channels = make_divisible(16 * width_mult)
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act="hswish")]
        for row in table:
            expanded, out = make_divisible(row.expansion * width_mult), make_divisible(row.out * width_mult)
            se = make_divisible(expanded // 4) if row.se else 0  # section 5.3: SE squeezes to 1/4 of the expansion
            features.append(
                InvertedResidual(channels, out, expanded, row.stride, row.kernel, row.act, se, se_gate="hsigmoid")
            )
            channels = out
        last_conv = 6 * channels  # 960 (large) / 576 (small)
        features.append(ConvBNAct(channels, last_conv, 1, act="hswish"))
        self.features = nn.Sequential(*features)
        self.stage_names = tuple(f"features.{i}" for i in range(len(features)))
        head_channels = make_divisible(head_channels * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, head_channels),  # the paper's "conv2d 1x1, NBN" on the pooled 1x1 map
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_channels, num_classes),
        )
        self.num_classes, self.num_features = num_classes, last_conv
        self.apply(init_weights)  # torchvision's: He fan_out, N(0, 0.01) linear
        set_batchnorm(self, eps=1e-3, momentum=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))


register_v1 = partial(register_model, "MobileNetV1", MOBILENET_V1, small_input=True)
register_v2 = partial(register_model, "MobileNetV2", MOBILENET_V2, small_input=True)
register_v3 = partial(register_model, "MobileNetV3", MOBILENET_V3, small_input=True)


@register_v1()
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNetV1 1.0 (alpha=1), 4.2M parameters."""
    return MobileNetV1(1.0, **kwargs)


@register_v1()
def mobilenet_v1_075(**kwargs) -> MobileNetV1:
    """MobileNetV1 0.75 (alpha=0.75)."""
    return MobileNetV1(0.75, **kwargs)


@register_v1()
def mobilenet_v1_050(**kwargs) -> MobileNetV1:
    """MobileNetV1 0.5 (alpha=0.5)."""
    return MobileNetV1(0.5, **kwargs)


@register_v1()
def mobilenet_v1_025(**kwargs) -> MobileNetV1:
    """MobileNetV1 0.25 (alpha=0.25)."""
    return MobileNetV1(0.25, **kwargs)


@register_v2()
def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNetV2 1.0 (pass width_mult for other widths), torchvision-compatible."""
    return MobileNetV2(**kwargs)


@register_v3()
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large, torchvision-compatible."""
    return MobileNetV3(V3_LARGE, 1280, **kwargs)


@register_v3()
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small, torchvision-compatible."""
    return MobileNetV3(V3_SMALL, 1024, **kwargs)
