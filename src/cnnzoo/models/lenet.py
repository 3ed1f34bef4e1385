"""LeNet-5: LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document recognition".

The textbook LeNet-5 of the paper's Figure 2, on 1x32x32 input:

    layer  type             maps  kernel  output     trainable params
    C1     conv             6     5x5     6x28x28    156
    S2     avg pool         6     2x2/2   6x14x14    0
    C3     conv             16    5x5     16x10x10   2,416
    S4     avg pool         16    2x2/2   16x5x5     0
    C5     conv             120   5x5     120x1x1    48,120
    F6     fully connected  84            84         10,164
    output fully connected  10            10         850        (61,706 in all)

Deviations from the 1998 paper, as in the textbook tables: S2/S4 are plain average pools (the paper's
sub-sampling layers had a trainable coefficient and bias per map), C3 connects to all six S2 maps (the paper
used the sparse connection table of its Table I), and the output is a linear layer in place of RBF units.
`lenet5_relu` keeps the shapes and uses ReLU and max pooling, as most modern re-implementations do.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from cnnzoo.layers import ACTIVATIONS
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

LENET = Paper("Gradient-based learning applied to document recognition", "LeCun, Bottou, Bengio, Haffner", 1998)
register = partial(register_model, "LeNet", LENET, input_size=(1, 32, 32), num_classes=10)

POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(ZooModel):
    """LeNet-5 with a configurable activation and pooling."""

    stage_names = ("features.c1", "features.c3", "features.c5", "f6")
    cam_layer = "features"
    classifier_path = "fc"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, act: str = "sigmoid", pool: str = "avg"):
        super().__init__()
        act_layer, pool_layer = ACTIVATIONS[act], POOLS[pool]
        self.features = nn.Sequential(
            OrderedDict(
                c1=nn.Conv2d(in_chans, 6, 5),
                act1=act_layer(),
                s2=pool_layer(2, 2),
                c3=nn.Conv2d(6, 16, 5),
                act3=act_layer(),
                s4=pool_layer(2, 2),
                c5=nn.Conv2d(16, 120, 5),
                act5=act_layer(),
            )
        )
        self.f6 = nn.Linear(120, 84)
        self.act6 = act_layer()
        self.fc = nn.Linear(84, num_classes)
        self.num_classes, self.num_features = num_classes, 120

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act6(self.f6(torch.flatten(x, 1))))


@register()
def lenet5(**kwargs) -> LeNet5:
    """LeNet-5 as in the textbook table: sigmoid activations, average pooling, 61,706 parameters."""
    return LeNet5(**kwargs)


@register()
def lenet5_relu(**kwargs) -> LeNet5:
    """LeNet-5 shapes with ReLU and max pooling."""
    return LeNet5(act="relu", pool="max", **kwargs)
