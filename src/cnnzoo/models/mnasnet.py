"""MnasNet: Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le (2019), "MnasNet: Platform-Aware Neural Architecture
Search for Mobile", arXiv:1807.11626.

The network torchvision ships, the "B1" of the authors' TensorFlow reference code: the searched architecture
without squeeze-and-excitation. A 3x3/2 stem, a depthwise separable convolution (SepConv 3x3, no skip), six
stages of inverted residual blocks (MBConv: 1x1 expansion by a factor t, kxk depthwise, linear 1x1 projection; an
identity shortcut where stride 1 keeps the channels), a 1x1 convolution to 1280, global pooling, dropout, FC.

The depth multiplier alpha (the "width multiplier" of MobileNets) scales the stem, the SepConv and every stage,
rounded to a multiple of 8 by torchvision's rule (_round_to_multiple_of, round-up bias 0.9): to the nearest
multiple, or the next one up when the nearest is more than 10% below (alpha = 1 keeps 32, 16, 24, 40, 80, 96, 192,
320; 0.5 gives 16, 8, 16, 24, 40, 48, 96, 160). The 1280-channel head is never scaled.
BatchNorm momentum is torchvision's 1 - 0.9997 = 3e-4 (a TensorFlow decay of 0.9997, which torchvision attributes to
the paper): running statistics move very slowly, so after a short training run they still lag far behind the
data (cnnzoo.layers.set_batchnorm can set a larger momentum for such runs). Parameters at
1000 classes: 2,218,512 (0.5), 3,170,208 (0.75), 4,383,312 (1.0), 6,282,256 (1.3); module names are torchvision's
(one flat ``layers`` Sequential), so its weights load.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ConvBNAct, init_weights, set_batchnorm
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["MnasStage", "MNASNET_STAGES", "MNASNet", "MBConvBlock", "round_depth", "stage_depths", "mnasnet0_5",
           "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"]

MNASNET = Paper(
    "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
    "Tan, Chen, Pang, Vasudevan, Sandler, Howard, Le",
    2019,
    "1807.11626",
)

BN_MOMENTUM = 1 - 0.9997  # a TensorFlow decay of 0.9997 in PyTorch's convention (torchvision's _BN_MOMENTUM)
STEM, SEPCONV, HEAD = 32, 16, 1280  # stem 3x3/2 filters, SepConv 3x3 output; the head (never scaled)


class MnasStage(NamedTuple):
    """One stage of MBConv blocks, in the paper's symbols: MBConv{t} k x k, c channels, n blocks, stride s."""

    t: int  # expansion factor of the first 1x1
    k: int  # depthwise kernel
    c: int  # output channels (at alpha = 1)
    n: int  # blocks
    s: int  # stride of the first block


# After the stem (conv 3x3/2, 32) and the SepConv (depthwise 3x3 + linear 1x1, 16): MBConv{t} k x k, c, n, s.
MNASNET_STAGES = [
    MnasStage(3, 3, 24, 3, 2),
    MnasStage(3, 5, 40, 3, 2),
    MnasStage(6, 5, 80, 3, 2),
    MnasStage(6, 3, 96, 2, 1),
    MnasStage(6, 5, 192, 4, 2),
    MnasStage(6, 3, 320, 1, 1),
]


def round_depth(value: float, divisor: int = 8, round_up_bias: float = 0.9) -> int:
    """torchvision's _round_to_multiple_of: the nearest multiple of divisor (at least divisor), one multiple more
    when that falls below round_up_bias x value (so 83 -> 80, but 84 -> 88)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded if rounded >= round_up_bias * value else rounded + divisor


def stage_depths(alpha: float) -> list[int]:
    """Channels of the stem, the SepConv and the six MBConv stages at depth multiplier alpha."""
    return [round_depth(c * alpha) for c in (STEM, SEPCONV, *(row.c for row in MNASNET_STAGES))]


def _flat(*blocks: nn.Sequential) -> list[nn.Module]:
    """The conv, BN (and activation) of ConvBNAct blocks as one flat list, torchvision's MNASNet layout."""
    return [m for block in blocks for m in block]


class MBConvBlock(nn.Module):
    """MBConv{t} k x k: 1x1 expansion + BN + ReLU, depthwise k x k + BN + ReLU, linear 1x1 + BN, identity
    shortcut at stride 1 with unchanged channels. A flat ``layers`` Sequential, as torchvision's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int):
        super().__init__()
        mid = in_channels * expansion
        self.apply_residual = in_channels == out_channels and stride == 1
        self.layers = nn.Sequential(
            *_flat(
                ConvBNAct(in_channels, mid, 1),
                ConvBNAct(mid, mid, kernel_size, stride, groups=mid),
                ConvBNAct(mid, out_channels, 1, act=None),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_residual:
            return self.layers(x) + x
        return self.layers(x)


class MNASNet(ZooModel):
    """MnasNet (B1) at depth multiplier alpha; torchvision's module names and BN momentum."""

    cam_layer = "layers"
    classifier_path = "classifier.1"
    channels_last = True
    _version = 2  # torchvision's MNASNet state_dict version (scaled stem), so our weights load into it as well

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2):
        super().__init__()
        if alpha <= 0:
            raise UserError(f"MnasNet's depth multiplier must be positive, not {alpha}")
        stem, sep, *widths = stage_depths(alpha)
        layers: list[nn.Module] = _flat(
            ConvBNAct(in_chans, stem, 3, 2),
            ConvBNAct(stem, stem, 3, groups=stem),  # SepConv: depthwise 3x3 ...
            ConvBNAct(stem, sep, 1, act=None),  # ... and a linear pointwise 1x1
        )
        stages = ["layers.0", "layers.3"]
        channels = sep
        for row, width in zip(MNASNET_STAGES, widths):
            blocks = [MBConvBlock(channels if i == 0 else width, width, row.k, row.s if i == 0 else 1, row.t)
                      for i in range(row.n)]
            stages.append(f"layers.{len(layers)}")
            layers.append(nn.Sequential(*blocks))
            channels = width
        stages.append(f"layers.{len(layers)}")
        layers += _flat(ConvBNAct(channels, HEAD, 1))
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(HEAD, num_classes))
        self.stage_names = tuple(stages)  # stem, SepConv, the six stages, the head conv
        self.alpha = alpha
        self.num_classes, self.num_features = num_classes, HEAD
        self.apply(init_weights)  # He fan_out convolutions, as torchvision
        _init_linear(self.classifier[1])
        set_batchnorm(self, eps=1e-5, momentum=BN_MOMENTUM)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))

    def reset_classifier(self, num_classes: int) -> None:
        ZooModel.reset_classifier(self, num_classes)
        _init_linear(self.get_classifier())


def _init_linear(fc: nn.Linear) -> None:
    nn.init.kaiming_uniform_(fc.weight, mode="fan_out", nonlinearity="sigmoid")  # torchvision's MNASNet
    nn.init.zeros_(fc.bias)


register = partial(register_model, "MnasNet", MNASNET)


@register()
def mnasnet0_5(**kwargs) -> MNASNet:
    """MnasNet-B1 0.5 (depth multiplier 0.5), torchvision-compatible."""
    return MNASNet(0.5, **kwargs)


@register()
def mnasnet0_75(**kwargs) -> MNASNet:
    """MnasNet-B1 0.75 (depth multiplier 0.75), torchvision-compatible."""
    return MNASNet(0.75, **kwargs)


@register()
def mnasnet1_0(**kwargs) -> MNASNet:
    """MnasNet-B1 1.0, 4.4M parameters, torchvision-compatible."""
    return MNASNet(1.0, **kwargs)


@register()
def mnasnet1_3(**kwargs) -> MNASNet:
    """MnasNet-B1 1.3 (depth multiplier 1.3), torchvision-compatible."""
    return MNASNet(1.3, **kwargs)
