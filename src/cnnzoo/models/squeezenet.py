"""SqueezeNet 1.0 and 1.1: Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer (2016), "SqueezeNet: AlexNet-level
accuracy with 50x fewer parameters and <0.5MB model size", arXiv:1602.07360.

A Fire module (section 3.2) squeezes its input with s1x1 1x1 convolutions, then expands with e1x1 1x1 and e3x3 3x3
convolutions side by side, concatenated (e1x1 + e3x3 output channels), a ReLU after each convolution. SqueezeNet
1.0 is the paper's Table 1: conv1 (96 filters 7x7/2), max pool, fire2-4, max pool, fire5-8, max pool, fire9,
dropout 0.5, conv10 (1x1, one map per class), global average pooling. SqueezeNet 1.1 is the authors' later
revision (their GitHub release, "2.4x less computation than 1.0, without sacrificing accuracy"): conv1 has 64
filters 3x3/2 and the pools move forward, after conv1, fire3 and fire5. Max pools are 3x3/2 and round up, as in
Caffe. Parameters 1,248,424 (1.0) and 1,235,496 (1.1); module names are torchvision's, so its weights load.

How the contract maps onto a network without a linear layer (as cnnzoo's NiN): conv10, the 1x1 convolution with
num_classes outputs, is the classifier (`classifier.1`, an nn.Conv2d). forward_features returns fire9's 512-channel
map and forward_head is dropout, conv10, ReLU, global average pooling. reset_classifier replaces conv10 by a fresh
1x1 convolution. The ReLU on the class maps is kept (the paper's and torchvision's network, whose outputs we match),
so logits are never negative and the head is not GAP + linear: `cnnzoo explain` uses Grad-CAM, not CAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["Fire", "FireRow", "SqueezeNet", "squeezenet1_0", "squeezenet1_1"]

SQUEEZENET = Paper(
    "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
    "Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer",
    2016,
    "1602.07360",
)


class FireRow(NamedTuple):
    """One Fire module of Table 1: s1x1 squeeze filters, e1x1 and e3x3 expand filters."""

    s1x1: int
    e1x1: int
    e3x3: int


class Conv1Row(NamedTuple):
    """The first layer: a plain convolution (no padding) followed by a ReLU."""

    filters: int
    kernel: int
    stride: int


POOL = "maxpool"  # 3x3/2 max pool, rounding up

# SqueezeNet 1.0, Table 1 (conv1, maxpool1, fire2-4, maxpool4, fire5-8, maxpool8, fire9; conv10 is the classifier).
SQUEEZENET_1_0 = [
    Conv1Row(96, 7, 2),
    POOL,
    FireRow(16, 64, 64),  # fire2
    FireRow(16, 64, 64),  # fire3
    FireRow(32, 128, 128),  # fire4
    POOL,
    FireRow(32, 128, 128),  # fire5
    FireRow(48, 192, 192),  # fire6
    FireRow(48, 192, 192),  # fire7
    FireRow(64, 256, 256),  # fire8
    POOL,
    FireRow(64, 256, 256),  # fire9
]

# SqueezeNet 1.1 (the authors' release): the same Fire modules, a 3x3 conv1 with 64 filters, earlier pools.
SQUEEZENET_1_1 = [
    Conv1Row(64, 3, 2),
    POOL,
    FireRow(16, 64, 64),  # fire2
    FireRow(16, 64, 64),  # fire3
    POOL,
    FireRow(32, 128, 128),  # fire4
    FireRow(32, 128, 128),  # fire5
    POOL,
    FireRow(48, 192, 192),  # fire6
    FireRow(48, 192, 192),  # fire7
    FireRow(64, 256, 256),  # fire8
    FireRow(64, 256, 256),  # fire9
]


class Fire(nn.Module):
    """Fire module (section 3.2, Fig. 1): squeeze 1x1 + ReLU, then concat(expand 1x1 + ReLU, expand 3x3 + ReLU).
    torchvision's attribute names, so that its weights load."""

    def __init__(self, in_channels: int, row: FireRow):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, row.s1x1, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(row.s1x1, row.e1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(row.s1x1, row.e3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.out_channels = row.e1x1 + row.e3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            (self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))), 1
        )


def _init_class_conv(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, 0.0, 0.01)  # the paper's Caffe model and torchvision: conv10 starts small
    nn.init.zeros_(conv.bias)


class SqueezeNet(ZooModel):
    """SqueezeNet from a table of layers: a first convolution, max pools and Fire modules, then the class conv.

    Args:
        table: Conv1Row first, then FireRow or POOL entries in forward order.
        num_classes: channels of the class maps (conv10).
        in_chans: input channels.
        dropout: before conv10 (0.5 in the paper, after fire9).
    """

    cam_layer = "features"
    classifier_path = "classifier.1"

    def __init__(self, table: Sequence, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        first, *rest = table
        if not isinstance(first, Conv1Row):
            raise ValueError("a SqueezeNet table starts with its Conv1Row")
        layers: list[nn.Module] = [nn.Conv2d(in_chans, first.filters, first.kernel, first.stride), nn.ReLU(True)]
        stages = ["features.0"]
        channels = first.filters
        for row in rest:
            if row == POOL:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                stages.append(f"features.{len(layers)}")
                layers.append(Fire(channels, row))
                channels = layers[-1].out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1), nn.ReLU(True), nn.AdaptiveAvgPool2d(1)
        )
        self.stage_names = tuple(stages)  # conv1 and every Fire module
        self.num_features, self.num_classes = channels, num_classes
        for m in self.modules():  # torchvision's initialisation: He-uniform (fan_in), zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        _init_class_conv(self.classifier[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(x), 1)  # class maps N x K x H x W -> ReLU -> pooled logits N x K

    def reset_classifier(self, num_classes: int) -> None:
        """Replace conv10 (SqueezeNet has no linear layer) by a fresh 1x1 convolution with num_classes outputs."""
        old = self.get_classifier()
        new = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        _init_class_conv(new)
        parent, _, leaf = self.classifier_path.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        self.num_classes = num_classes


register = partial(register_model, "SqueezeNet", SQUEEZENET)


@register()
def squeezenet1_0(**kwargs) -> SqueezeNet:
    """SqueezeNet 1.0 (Table 1), 1.2M parameters, torchvision-compatible."""
    return SqueezeNet(SQUEEZENET_1_0, **kwargs)


@register()
def squeezenet1_1(**kwargs) -> SqueezeNet:
    """SqueezeNet 1.1 (the authors' revision: 2.4x fewer MACs than 1.0), torchvision-compatible."""
    return SqueezeNet(SQUEEZENET_1_1, **kwargs)
