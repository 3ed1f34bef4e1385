"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) and ZFNet (Zeiler & Fergus 2013, arXiv:1311.2901).

Four networks share one class and differ only by their convolution table and head:

    name          convs                    first conv      LRN   FC          params (1000 classes)
    alexnet       64-192-384-256-256       11x11/4 pad 2   no    4096-4096   61,100,840   (torchvision)
    alexnet_v1    96-256-384-384-256       11x11/4 pad 2   yes   4096-4096   62,378,344   (60,965,224 with towers=2)
    alexnet_half  48-128-192-192-128       11x11/4 pad 2   no    2048-2048   14,591,685 at 5 classes
    zfnet         96-256-384-384-256       7x7/2 pad 1     yes   4096-4096   62,357,608

`alexnet` is torchvision's single-GPU network, which follows "One weird trick for parallelizing convolutional
neural networks" (Krizhevsky 2014, arXiv:1404.5997) rather than the 2012 paper: 64-192-384-256-256 channels, no
local response normalisation, dropout on the inputs of fc6 and fc7. Its module names are torchvision's, so
torchvision state_dicts load strictly.

`alexnet_v1` is the 2012 paper's network: local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75) after
the ReLUs of conv1 and conv2, overlapping 3x3 stride-2 max pools after the two normalisations and after conv5,
dropout 0.5 on the outputs of fc6 and fc7. ``towers=2`` restores the two-GPU split of Figure 2: conv2, conv4 and
conv5 see only the maps of their own tower (grouped convolutions); conv3 and the FC layers see both. The paper
quotes 224x224 inputs and 55x55 conv1 maps, which do not agree without padding; we pad conv1 by 2, as torchvision
does, so that 224 gives 55. Initialisation is PyTorch's default, not the paper's N(0, 0.01) with unit biases.

`alexnet_half` halves every width (48-128-192-192-128 convs, 2048-2048 FC), the variant used on small five-class
flower data sets; with 5 classes it has exactly 14,591,685 parameters.

`zfnet` is Figure 3 of Zeiler & Fergus: a 7x7 stride-2 conv1 (224 -> 110) and a 5x5 stride-2 conv2 (55 -> 26),
each followed by ReLU, 3x3 stride-2 max pooling and contrast normalisation across feature maps, which we
implement as AlexNet's local response normalisation (the paper gives no constants). Its pools round up, as Caffe
does, so that the maps are the paper's 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6.

Every variant ends its features with an adaptive 6x6 average pool, as torchvision does, so other input sizes work.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.layers import LocalResponseNorm
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["ConvRow", "AlexNet", "PAPER_LRN", "alexnet", "alexnet_v1", "alexnet_half", "zfnet"]

ALEXNET = Paper(
    "ImageNet classification with deep convolutional neural networks", "Krizhevsky, Sutskever, Hinton", 2012
)
ONE_WEIRD_TRICK = Paper(
    "One weird trick for parallelizing convolutional neural networks", "Krizhevsky", 2014, "1404.5997"
)
ZFNET = Paper("Visualizing and understanding convolutional networks", "Zeiler, Fergus", 2013, "1311.2901")

# Section 3.3: k=2, n=5, alpha=1e-4, beta=0.75. The paper's formula has no 1/n in front of the sum; PyTorch's
# (and Caffe's) does, so the paper's alpha is n * 1e-4 = 5e-4 here. The VGG paper's A-LRN reuses these constants.
PAPER_LRN = dict(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


class ConvRow(NamedTuple):
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    split: bool = False  # grouped over the two GPU towers of the 2012 paper when the network has towers=2
    post: tuple[str, ...] = ()  # what follows the ReLU, in order: "lrn", "pool"


#   out  kernel stride pad  split  after the ReLU
ALEXNET_TV = [  # torchvision / "one weird trick"
    ConvRow(64, 11, 4, 2, post=("pool",)),
    ConvRow(192, 5, 1, 2, post=("pool",)),
    ConvRow(384, 3, 1, 1),
    ConvRow(256, 3, 1, 1),
    ConvRow(256, 3, 1, 1, post=("pool",)),
]
ALEXNET_2012 = [  # Figure 2 and section 3.5 of the 2012 paper
    ConvRow(96, 11, 4, 2, post=("lrn", "pool")),
    ConvRow(256, 5, 1, 2, split=True, post=("lrn", "pool")),
    ConvRow(384, 3, 1, 1),
    ConvRow(384, 3, 1, 1, split=True),
    ConvRow(256, 3, 1, 1, split=True, post=("pool",)),
]
ALEXNET_HALF = [
    ConvRow(48, 11, 4, 2, post=("pool",)),
    ConvRow(128, 5, 1, 2, post=("pool",)),
    ConvRow(192, 3, 1, 1),
    ConvRow(192, 3, 1, 1),
    ConvRow(128, 3, 1, 1, post=("pool",)),
]
ZFNET_CONVS = [  # Figure 3 of Zeiler & Fergus: pooling, then contrast normalisation
    ConvRow(96, 7, 2, 1, post=("pool", "lrn")),
    ConvRow(256, 5, 2, 0, post=("pool", "lrn")),
    ConvRow(384, 3, 1, 1),
    ConvRow(384, 3, 1, 1),
    ConvRow(256, 3, 1, 1, post=("pool",)),
]


def make_features(convs: Sequence[ConvRow], in_chans: int, towers: int, pool_ceil: bool) -> nn.Sequential:
    """conv, ReLU, then the row's LRN/pool, flat as in torchvision (features.0, features.1, ...)."""
    layers: list[nn.Module] = []
    for row in convs:
        groups = towers if row.split else 1
        layers += [nn.Conv2d(in_chans, row.out_channels, row.kernel_size, row.stride, row.padding, groups=groups)]
        layers += [nn.ReLU(inplace=True)]
        for op in row.post:
            layers += [LocalResponseNorm(**PAPER_LRN) if op == "lrn" else nn.MaxPool2d(3, 2, ceil_mode=pool_ceil)]
        in_chans = row.out_channels
    return nn.Sequential(*layers)


def make_classifier(in_features: int, hidden: int, num_classes: int, dropout: float, dropout_first: bool):
    """fc6-fc7-fc8. torchvision drops the inputs of fc6 and fc7; the paper (and Caffe) the outputs of fc6 and fc7."""
    fc6 = [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
    fc7 = [nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
    if dropout_first:
        layers = [nn.Dropout(dropout), *fc6, nn.Dropout(dropout), *fc7]
    else:
        layers = [*fc6, nn.Dropout(dropout), *fc7, nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(hidden, num_classes))


class AlexNet(ZooModel):
    """AlexNet-style network: a table of convolutions, an adaptive 6x6 average pool, three FC layers.

    Args:
        convs: one ConvRow per convolution.
        hidden: width of fc6 and fc7.
        num_classes: outputs of fc8.
        in_chans: input channels.
        dropout: dropout probability of the FC layers.
        towers: 2 splits the `split` rows into two groups, as the 2012 paper's two GPUs did.
        dropout_first: torchvision's placement (dropout before fc6 and fc7) instead of the paper's (after).
        pool_ceil: round pooled sizes up (Caffe), as ZFNet's published shapes need.
    """

    cam_layer = "features"
    classifier_path = "classifier.6"

    def __init__(
        self,
        convs: Sequence[ConvRow],
        hidden: int = 4096,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
        towers: int = 1,
        dropout_first: bool = False,
        pool_ceil: bool = False,
    ):
        super().__init__()
        self.features = make_features(convs, in_chans, towers, pool_ceil)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = convs[-1].out_channels
        self.classifier = make_classifier(self.num_features * 36, hidden, num_classes, dropout, dropout_first)
        self.num_classes = num_classes
        # One stage per weight layer (the flat torchvision layout has no coarser container); fc8 is the classifier.
        self.stage_names = tuple(
            f"{part}.{i}"
            for part in ("features", "classifier")
            for i, m in enumerate(getattr(self, part))
            if isinstance(m, (nn.Conv2d, nn.Linear)) and f"{part}.{i}" != self.classifier_path
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))


register = partial(register_model, "AlexNet", ALEXNET)


@register_model("AlexNet", ONE_WEIRD_TRICK)
def alexnet(**kwargs) -> AlexNet:
    """torchvision's single-tower AlexNet (64-192-384-256-256 convs, no LRN), 61,100,840 parameters."""
    return AlexNet(ALEXNET_TV, dropout_first=True, **kwargs)


@register()
def alexnet_v1(**kwargs) -> AlexNet:
    """The 2012 paper's AlexNet: 96-256-384-384-256 convs, LRN, overlapping pools; towers=2 for the GPU split."""
    return AlexNet(ALEXNET_2012, **kwargs)


@register()
def alexnet_half(**kwargs) -> AlexNet:
    """Half-width AlexNet: 48-128-192-192-128 convs, FC 2048-2048, for small data sets such as 5 flower classes."""
    return AlexNet(ALEXNET_HALF, hidden=2048, dropout_first=True, **kwargs)


@register_model("AlexNet", ZFNET)
def zfnet(**kwargs) -> AlexNet:
    """ZFNet: AlexNet with a 7x7 stride-2 conv1 and a 5x5 stride-2 conv2 (Zeiler & Fergus 2013)."""
    return AlexNet(ZFNET_CONVS, pool_ceil=True, **kwargs)
