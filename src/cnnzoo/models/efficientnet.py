"""EfficientNet B0-B7 and EfficientNetV2.

EfficientNet: Tan & Le (2019), "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
arXiv:1905.11946. B0 is Table 1: a 3x3/2 stem, seven stages of MBConv blocks (inverted residuals with
squeeze-excitation and swish), a 1x1 head conv, pooling, dropout and FC. B1-B7 come from B0 by compound scaling
(section 3.3): widths are multiplied by w and rounded to multiples of 8, each stage's depth by d (rounded up), and the
input resolution is r. The eq. 3 coefficients (alpha=1.2, beta=1.1, gamma=1.15 per unit of phi) were rounded by the
authors into the per-variant (w, d, r, dropout) of the reference implementation, which we use, as torchvision and
timm do.

EfficientNetV2: Tan & Le (2021), "EfficientNetV2: Smaller Models and Faster Training", arXiv:2104.00298.
- V2-S is Table 4: a 3x3/2 stem with 24 channels, three stages of Fused-MBConv (Figure 2: MBConv's 1x1 expansion and
  depthwise kxk fused into one regular kxk convolution, no SE), three stages of MBConv with SE 0.25, and the 1x1 head
  with 1280 channels. The paper gives only V2-S's table (M and L are "scaled up", section 3.3); V2-M's and V2-L's rows
  are the official release's (google/automl, efficientnetv2/effnetv2_configs.py, ``v2_m_block``/``v2_l_block``), which
  torchvision also uses. Default input sizes are the release's evaluation sizes, which torchvision's weights use:
  384 (S), 480 (M, L). 21,458,488 / 54,139,356 / 118,515,272 parameters, torchvision-compatible.
- V2-B0..B3 ("for comparison with EfficientNetV1", the release's README) are the release's ``v2_base_block`` scaled as
  V1's B0-B3: (width, depth) = (1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), evaluated at 224/240/260/300, dropout
  0.2/0.2/0.3/0.3 (``efficientnetv2_params``). Widths are rounded as the release's ``round_filters`` does, to the
  nearest multiple of 8 without V1's "never 10% below" rule (that rule would widen B3's first stage from 16 to 24),
  and the head is 1280 x width. Parameter counts at 1000 classes: 7,139,704 / 8,141,052 / 10,096,086 / 14,358,406, the
  release README's 7.1M, 8.1M, 10.1M and 14.4M (google/automl efficientnetv2/README.md, "EffNetV2-B0..B3" table).
  torchvision has no V2-B networks.

Both: stochastic depth grows linearly with block index to 0.2 (the reference code's drop_connect_rate, survival
probability 0.8). Module names and BN settings follow torchvision so that its weights load: PyTorch's defaults for
B0-B4; TensorFlow's eps 1e-3 and momentum 0.01 for the TF-ported B5-B7; eps 1e-3 for V2 (the V2 reference code's
eps, and torchvision's).

TensorFlow ports: ``tf_efficientnet_b0``..``b7`` are B0-B7 as Google released them, trained in TensorFlow and ported
by timm under the same names. They hold the same tensors as ``efficientnet_bN`` but differ in what a weight file
cannot show: every convolution with stride 2 pads like TensorFlow's "SAME" (the total padding depends on the input
size, and an odd pixel goes on the bottom/right, not on both sides; ``cnnzoo.layers.Conv2dSame``), and every
BatchNorm has TensorFlow's eps 1e-3 (momentum 0.01) on all eight. Their default input sizes are the release's (timm's
default configs): those of B0-B7. timm's ``tf_efficientnet_bN`` files load into them through the converter in
``cnnzoo.layouts``.

``tf_efficientnetv2_s``/``m``/``l``/``b0``..``b3`` are EfficientNetV2 as Google released it (google/automl,
trained in TensorFlow), ported by timm under the same names. They hold the same tensors as ``efficientnet_v2_*``
(torchvision's layout; timm's counts are ours) and V2 already has TensorFlow's eps 1e-3 (momentum 0.1, as timm), so
they differ only in padding: the stem and every stride-2 block convolution (Fused-MBConv's kxk, MBConv's depthwise)
pad like TensorFlow's "SAME". Their default input sizes are timm's default configs, the release's training sizes:
300 (S), 384 (M, L), 192 (B0, B1), 208 (B2), 240 (B3), where ``efficientnet_v2_*`` use the evaluation sizes.

``small_input=True`` makes the stem stride 1 for 32x32 images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ConvBNAct, FusedMBConv, MBConv, make_divisible, pad_like_tensorflow, set_batchnorm
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

EFFICIENTNET = Paper(
    "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", "Tan, Le", 2019, "1905.11946"
)
EFFICIENTNET_V2 = Paper("EfficientNetV2: Smaller Models and Faster Training", "Tan, Le", 2021, "2104.00298")


class Stage(NamedTuple):
    """One row of V1's Table 1 / V2's Table 4: the operator (block type, expansion, kernel), stride, channels, layers
    and squeeze-excitation ratio."""

    block: str  # "mbconv" (MBConv) or "fused" (Fused-MBConv)
    expand: int
    kernel: int
    stride: int  # of the stage's first block
    channels: int
    layers: int
    se: float  # SE width as a fraction of the block's input channels; 0 for none


BLOCKS = {"mbconv": MBConv, "fused": FusedMBConv}

# EfficientNet-B0, Table 1, stages 2-8 (stage 1 is the 3x3/2 stem with 32 channels, stage 9 the 1x1 head with 1280).
# SE 0.25 everywhere (section 4).
B0_STAGES = [
    Stage("mbconv", 1, 3, 1, 16, 1, 0.25),
    Stage("mbconv", 6, 3, 2, 24, 2, 0.25),
    Stage("mbconv", 6, 5, 2, 40, 2, 0.25),
    Stage("mbconv", 6, 3, 2, 80, 3, 0.25),
    Stage("mbconv", 6, 5, 1, 112, 3, 0.25),
    Stage("mbconv", 6, 5, 2, 192, 4, 0.25),
    Stage("mbconv", 6, 3, 1, 320, 1, 0.25),
]
B0_STEM, B0_HEAD = 32, 1280

# EfficientNetV2-S, Table 4, stages 1-6 (stage 0 is the 3x3/2 stem with 24 channels, stage 7 the 1x1 head with 1280).
V2_S_STAGES = [
    Stage("fused", 1, 3, 1, 24, 2, 0),
    Stage("fused", 4, 3, 2, 48, 4, 0),
    Stage("fused", 4, 3, 2, 64, 4, 0),
    Stage("mbconv", 4, 3, 2, 128, 6, 0.25),
    Stage("mbconv", 6, 3, 1, 160, 9, 0.25),
    Stage("mbconv", 6, 3, 2, 256, 15, 0.25),
]
# V2-M and V2-L: the official release's tables (stems 24 and 32, heads 1280); a seventh stage over V2-S.
V2_M_STAGES = [
    Stage("fused", 1, 3, 1, 24, 3, 0),
    Stage("fused", 4, 3, 2, 48, 5, 0),
    Stage("fused", 4, 3, 2, 80, 5, 0),
    Stage("mbconv", 4, 3, 2, 160, 7, 0.25),
    Stage("mbconv", 6, 3, 1, 176, 14, 0.25),
    Stage("mbconv", 6, 3, 2, 304, 18, 0.25),
    Stage("mbconv", 6, 3, 1, 512, 5, 0.25),
]
V2_L_STAGES = [
    Stage("fused", 1, 3, 1, 32, 4, 0),
    Stage("fused", 4, 3, 2, 64, 7, 0),
    Stage("fused", 4, 3, 2, 96, 7, 0),
    Stage("mbconv", 4, 3, 2, 192, 10, 0.25),
    Stage("mbconv", 6, 3, 1, 224, 19, 0.25),
    Stage("mbconv", 6, 3, 2, 384, 25, 0.25),
    Stage("mbconv", 6, 3, 1, 640, 7, 0.25),
]
# V2-B0: the release's baseline (``v2_base_block``), stem 32, head 1280, which V2-B1..B3 scale.
V2_BASE_STAGES = [
    Stage("fused", 1, 3, 1, 16, 1, 0),
    Stage("fused", 4, 3, 2, 32, 2, 0),
    Stage("fused", 4, 3, 2, 48, 2, 0),
    Stage("mbconv", 4, 3, 2, 96, 3, 0.25),
    Stage("mbconv", 6, 3, 1, 112, 5, 0.25),
    Stage("mbconv", 6, 3, 2, 192, 8, 0.25),
]
V2_BASE_STEM, V2_BASE_HEAD = 32, 1280


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
# The V2 release's B0-B3 (``efficientnetv2_params``): V1's coefficients, resolutions and dropout.
V2_SCALING = {name: SCALING[name] for name in ("b0", "b1", "b2", "b3")}


class Variant(NamedTuple):
    """A whole network: stem width, stage table, head width, default resolution, dropout, BatchNorm settings."""

    stem: int
    stages: list[Stage]
    head: int
    resolution: int
    dropout: float
    batchnorm: tuple[float, float]  # eps, momentum (PyTorch's convention)
    tf_padding: bool = False  # TensorFlow's "SAME" padding (the TensorFlow-trained release, timm's tf_ ports)


PYTORCH_BN, TF_BN, V2_BN = (1e-5, 0.1), (1e-3, 0.01), (1e-3, 0.1)


def round_filters(channels: float) -> int:
    """The V2 release's width rounding: the nearest multiple of 8, at least 8 (no 10%-below correction)."""
    return max(8, int(channels + 4) // 8 * 8)


def scale_stages(
    scaling: Scaling, stages: list[Stage] = B0_STAGES, rounding: Callable[[float], int] = make_divisible
) -> list[Stage]:
    """Stages with widths times w (rounded to multiples of 8) and depths times d (rounded up); B0's by default."""
    return [
        s._replace(channels=rounding(s.channels * scaling.width), layers=math.ceil(s.layers * scaling.depth))
        for s in stages
    ]


def _v1(name: str) -> Variant:
    s = SCALING[name]
    bn = TF_BN if name in TF_BATCHNORM else PYTORCH_BN
    stem, head = make_divisible(B0_STEM * s.width), make_divisible(B0_HEAD * s.width)
    return Variant(stem, scale_stages(s), head, s.resolution, s.dropout, bn)


def _v2_base(name: str) -> Variant:
    s = V2_SCALING[name]
    stem, head = round_filters(V2_BASE_STEM * s.width), round_filters(V2_BASE_HEAD * s.width)
    return Variant(stem, scale_stages(s, V2_BASE_STAGES, round_filters), head, s.resolution, s.dropout, V2_BN)


VARIANTS: dict[str, Variant] = {
    **{name: _v1(name) for name in SCALING},
    "v2_s": Variant(24, V2_S_STAGES, 1280, 384, 0.2, V2_BN),
    "v2_m": Variant(24, V2_M_STAGES, 1280, 480, 0.3, V2_BN),
    "v2_l": Variant(32, V2_L_STAGES, 1280, 480, 0.4, V2_BN),
    **{f"v2_{name}": _v2_base(name) for name in V2_SCALING},
    # Google's TensorFlow release of B0-B7 (timm's tf_efficientnet_bN): TF's padding and BN settings on all eight.
    **{f"tf_{name}": _v1(name)._replace(batchnorm=TF_BN, tf_padding=True) for name in SCALING},
}
# Google's TensorFlow release of V2 (timm's tf_efficientnetv2_*): the same networks with TF's padding, at the
# release's training sizes (timm's default configs) rather than its evaluation sizes.
TF_V2_RESOLUTION = {"s": 300, "m": 384, "l": 384, "b0": 192, "b1": 192, "b2": 208, "b3": 240}
VARIANTS.update(
    {f"tf_v2_{name}": VARIANTS[f"v2_{name}"]._replace(resolution=size, tf_padding=True)
     for name, size in TF_V2_RESOLUTION.items()}
)


def _stage(stage: Stage, in_channels: int, drop_paths: list[float]) -> nn.Sequential:
    blocks = []
    for i, p in enumerate(drop_paths):
        channels = in_channels if i == 0 else stage.channels
        expanded = make_divisible(channels * stage.expand)
        se = max(1, int(channels * stage.se)) if stage.se else 0  # of the block's input channels; swish everywhere
        stride = stage.stride if i == 0 else 1
        block = BLOCKS[stage.block]
        blocks.append(block(channels, stage.channels, expanded, stride, stage.kernel, "silu", se, "silu", drop_path=p))
    return nn.Sequential(*blocks)


class EfficientNet(ZooModel):
    """EfficientNet (V1 or V2) from one variant's stem width, stage table, head width and dropout."""

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
        if variant not in VARIANTS:
            raise UserError(f"EfficientNet variants are {', '.join(VARIANTS)}, not {variant!r}")
        v = VARIANTS[variant]
        channels = v.stem
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act="silu")]
        total, index = sum(s.layers for s in v.stages), 0
        for s in v.stages:
            rates = [drop_path * (index + i) / total for i in range(s.layers)]  # linear decay rule (Huang et al.)
            features.append(_stage(s, channels, rates))
            channels, index = s.channels, index + s.layers
        features.append(ConvBNAct(channels, v.head, 1, act="silu"))
        self.features = nn.Sequential(*features)
        if v.tf_padding:
            pad_like_tensorflow(self.features)
        self.classifier = nn.Sequential(
            nn.Dropout(v.dropout if dropout is None else dropout), nn.Linear(v.head, num_classes)
        )
        self.stage_names = tuple(f"features.{i}" for i in range(len(features)))
        self.num_classes, self.num_features = num_classes, v.head
        self.apply(_init_weights)
        set_batchnorm(self, *v.batchnorm)

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
    size = VARIANTS[variant].resolution
    v2 = variant.removeprefix("tf_").startswith("v2")
    family, paper = ("EfficientNetV2", EFFICIENTNET_V2) if v2 else ("EfficientNet", EFFICIENTNET)
    return register_model(family, paper, input_size=(3, size, size), small_input=True)


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


@register("v2_s")
def efficientnet_v2_s(**kwargs) -> EfficientNet:
    """EfficientNetV2-S (Table 4), 384x384, torchvision-compatible."""
    return EfficientNet("v2_s", **kwargs)


@register("v2_m")
def efficientnet_v2_m(**kwargs) -> EfficientNet:
    """EfficientNetV2-M (the official release's table), 480x480, torchvision-compatible."""
    return EfficientNet("v2_m", **kwargs)


@register("v2_l")
def efficientnet_v2_l(**kwargs) -> EfficientNet:
    """EfficientNetV2-L (the official release's table), 480x480, torchvision-compatible."""
    return EfficientNet("v2_l", **kwargs)


@register("v2_b0")
def efficientnet_v2_b0(**kwargs) -> EfficientNet:
    """EfficientNetV2-B0 (the official release's baseline), 224x224."""
    return EfficientNet("v2_b0", **kwargs)


@register("v2_b1")
def efficientnet_v2_b1(**kwargs) -> EfficientNet:
    """EfficientNetV2-B1 (baseline x width 1.0, depth 1.1), 240x240."""
    return EfficientNet("v2_b1", **kwargs)


@register("v2_b2")
def efficientnet_v2_b2(**kwargs) -> EfficientNet:
    """EfficientNetV2-B2 (baseline x width 1.1, depth 1.2), 260x260."""
    return EfficientNet("v2_b2", **kwargs)


@register("v2_b3")
def efficientnet_v2_b3(**kwargs) -> EfficientNet:
    """EfficientNetV2-B3 (baseline x width 1.2, depth 1.4), 300x300."""
    return EfficientNet("v2_b3", **kwargs)


@register("tf_b0")
def tf_efficientnet_b0(**kwargs) -> EfficientNet:
    """EfficientNet-B0, 224x224, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b0", **kwargs)


@register("tf_b1")
def tf_efficientnet_b1(**kwargs) -> EfficientNet:
    """EfficientNet-B1, 240x240, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b1", **kwargs)


@register("tf_b2")
def tf_efficientnet_b2(**kwargs) -> EfficientNet:
    """EfficientNet-B2, 260x260, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b2", **kwargs)


@register("tf_b3")
def tf_efficientnet_b3(**kwargs) -> EfficientNet:
    """EfficientNet-B3, 300x300, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b3", **kwargs)


@register("tf_b4")
def tf_efficientnet_b4(**kwargs) -> EfficientNet:
    """EfficientNet-B4, 380x380, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b4", **kwargs)


@register("tf_b5")
def tf_efficientnet_b5(**kwargs) -> EfficientNet:
    """EfficientNet-B5, 456x456, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b5", **kwargs)


@register("tf_b6")
def tf_efficientnet_b6(**kwargs) -> EfficientNet:
    """EfficientNet-B6, 528x528, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b6", **kwargs)


@register("tf_b7")
def tf_efficientnet_b7(**kwargs) -> EfficientNet:
    """EfficientNet-B7, 600x600, as Google's TensorFlow release (timm's port): "SAME" padding, BN eps 1e-3."""
    return EfficientNet("tf_b7", **kwargs)


@register("tf_v2_s")
def tf_efficientnetv2_s(**kwargs) -> EfficientNet:
    """EfficientNetV2-S, 300x300, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_s", **kwargs)


@register("tf_v2_m")
def tf_efficientnetv2_m(**kwargs) -> EfficientNet:
    """EfficientNetV2-M, 384x384, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_m", **kwargs)


@register("tf_v2_l")
def tf_efficientnetv2_l(**kwargs) -> EfficientNet:
    """EfficientNetV2-L, 384x384, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_l", **kwargs)


@register("tf_v2_b0")
def tf_efficientnetv2_b0(**kwargs) -> EfficientNet:
    """EfficientNetV2-B0, 192x192, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_b0", **kwargs)


@register("tf_v2_b1")
def tf_efficientnetv2_b1(**kwargs) -> EfficientNet:
    """EfficientNetV2-B1, 192x192, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_b1", **kwargs)


@register("tf_v2_b2")
def tf_efficientnetv2_b2(**kwargs) -> EfficientNet:
    """EfficientNetV2-B2, 208x208, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_b2", **kwargs)


@register("tf_v2_b3")
def tf_efficientnetv2_b3(**kwargs) -> EfficientNet:
    """EfficientNetV2-B3, 240x240, as Google's TensorFlow release (timm's port): "SAME" padding."""
    return EfficientNet("tf_v2_b3", **kwargs)
