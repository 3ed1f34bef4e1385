"""EfficientNet B0-B7: Tan & Le (2019), "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
arXiv:1905.11946.

B0 is Table 1: a 3x3/2 stem, seven stages of MBConv blocks (inverted residuals with squeeze-excitation and swish),
a 1x1 head conv, pooling, dropout and FC. B1-B7 come from B0 by compound scaling (section 3.3): widths are
multiplied by w and rounded to multiples of 8, each stage's depth by d (rounded up), and the input resolution is r.
The eq. 3 coefficients (alpha=1.2, beta=1.1, gamma=1.15 per unit of phi) were rounded by the authors into the
per-variant (w, d, r, dropout) of the reference implementation, which we use, as torchvision and timm do.
Stochastic depth grows linearly with block index to 0.2 (the reference code's drop_connect_rate).
Module names and BN settings follow torchvision so that its weights load.

``small_input=True`` makes the stem stride 1 for 32x32 images.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ConvBNAct, MBConv, make_divisible, set_batchnorm
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

EFFICIENTNET = Paper(
    "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", "Tan, Le", 2019, "1905.11946"
)


class Stage(NamedTuple):
    """One row of Table 1: operator MBConv{expand} with a kernel x kernel depthwise, channels, layers."""

    expand: int
    kernel: int
    stride: int  # of the stage's first block, from the resolution column
    channels: int
    layers: int


# EfficientNet-B0, Table 1, stages 2-8 (stage 1 is the 3x3/2 stem with 32 channels, stage 9 the 1x1 head with 1280).
B0_STAGES = [
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
]
B0_STEM, B0_HEAD = 32, 1280


class Scaling(NamedTuple):
    """Compound scaling coefficients of one variant."""

    width: float
    depth: float
    resolution: int
    dropout: float


SCALING = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}
# torchvision ported B5-B7 from the TensorFlow weights and kept TF's BN settings; B0-B4 use PyTorch's defaults.
TF_BATCHNORM = {"b5", "b6", "b7"}


def scale_stages(scaling: Scaling) -> list[Stage]:
    """B0's stages with widths times w (multiples of 8) and depths times d (rounded up)."""
    return [
        s._replace(channels=make_divisible(s.channels * scaling.width), layers=math.ceil(s.layers * scaling.depth))
        for s in B0_STAGES
    ]


def _stage(stage: Stage, in_channels: int, drop_paths: list[float]) -> nn.Sequential:
    blocks = []
    for i, p in enumerate(drop_paths):
        channels = in_channels if i == 0 else stage.channels
        expanded = make_divisible(channels * stage.expand)
        se = max(1, channels // 4)  # SE ratio 0.25 of the block's input channels; swish everywhere
        stride = stage.stride if i == 0 else 1
        blocks.append(
            MBConv(channels, stage.channels, expanded, stride, stage.kernel, "silu", se, se_act="silu", drop_path=p)
        )
    return nn.Sequential(*blocks)


class EfficientNet(ZooModel):
    """EfficientNet from B0's stage table and one variant's compound scaling coefficients."""

    stage_names = tuple(f"features.{i}" for i in range(len(B0_STAGES) + 2))
    cam_layer = "features"
    classifier_path = "classifier.1"
    channels_last = True

    def __init__(
        self,
        variant: str = "b0",
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float | None = None,
        drop_path: float = 0.2,
        small_input: bool = False,
    ):
        super().__init__()
        if variant not in SCALING:
            raise UserError(f"EfficientNet variants are {', '.join(SCALING)}, not {variant!r}")
        scaling = SCALING[variant]
        stages = scale_stages(scaling)
        channels = make_divisible(B0_STEM * scaling.width)
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act="silu")]
        total, index = sum(s.layers for s in stages), 0
        for s in stages:
            rates = [drop_path * (index + i) / total for i in range(s.layers)]  # linear decay rule (Huang et al.)
            features.append(_stage(s, channels, rates))
            channels, index = s.channels, index + s.layers
        head = make_divisible(B0_HEAD * scaling.width)
        features.append(ConvBNAct(channels, head, 1, act="silu"))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(scaling.dropout if dropout is None else dropout), nn.Linear(head, num_classes)
        )
        self.num_classes, self.num_features = num_classes, head
        self.apply(_init_weights)
        if variant in TF_BATCHNORM:
            set_batchnorm(self, eps=1e-3, momentum=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))


def _init_weights(m: nn.Module) -> None:
    # torchvision's EfficientNet initialisation
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        bound = 1.0 / math.sqrt(m.out_features)
        nn.init.uniform_(m.weight, -bound, bound)
        nn.init.zeros_(m.bias)


def register(variant: str):
    """register_model with the variant's resolution as the model's default input size."""
    size = SCALING[variant].resolution
    return register_model("EfficientNet", EFFICIENTNET, input_size=(3, size, size), small_input=True)


@register("b0")
def efficientnet_b0(**kwargs) -> EfficientNet:
    """EfficientNet-B0 (Table 1), 224x224, torchvision-compatible."""
    return EfficientNet("b0", **kwargs)


@register("b1")
def efficientnet_b1(**kwargs) -> EfficientNet:
    """EfficientNet-B1, 240x240, torchvision-compatible."""
    return EfficientNet("b1", **kwargs)


@register("b2")
def efficientnet_b2(**kwargs) -> EfficientNet:
    """EfficientNet-B2, 260x260, torchvision-compatible."""
    return EfficientNet("b2", **kwargs)


@register("b3")
def efficientnet_b3(**kwargs) -> EfficientNet:
    """EfficientNet-B3, 300x300, torchvision-compatible."""
    return EfficientNet("b3", **kwargs)


@register("b4")
def efficientnet_b4(**kwargs) -> EfficientNet:
    """EfficientNet-B4, 380x380, torchvision-compatible."""
    return EfficientNet("b4", **kwargs)


@register("b5")
def efficientnet_b5(**kwargs) -> EfficientNet:
    """EfficientNet-B5, 456x456, torchvision-compatible."""
    return EfficientNet("b5", **kwargs)


@register("b6")
def efficientnet_b6(**kwargs) -> EfficientNet:
    """EfficientNet-B6, 528x528, torchvision-compatible."""
    return EfficientNet("b6", **kwargs)


@register("b7")
def efficientnet_b7(**kwargs) -> EfficientNet:
    """EfficientNet-B7, 600x600, torchvision-compatible."""
    return EfficientNet("b7", **kwargs)
