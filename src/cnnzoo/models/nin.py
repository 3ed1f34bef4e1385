"""Network in Network: Lin, Chen & Yan (2013), arXiv:1312.4400.

An mlpconv layer is a kxk convolution followed by two 1x1 convolutions (a small multilayer perceptron slid over
the image), each with a ReLU. There is no fully connected layer: the last mlpconv maps to one channel per class
and global average pooling turns those "category confidence maps" into logits.

`nin` is the paper's CIFAR-10 network (section 4.2, 32x32 inputs, about 0.97M parameters): three mlpconv layers
(192-160-96 with 5x5, 192-192-192 with 5x5, 192-192-classes with 3x3), each of the first two followed by 3x3
stride-2 max pooling and dropout 0.5. `nin_imagenet` is the authors' ImageNet model from their Caffe release
(four mlpconv layers 96-256-384-1024, 11x11 stride-4 first conv, dropout before the last one, about 7.6M).
Pools round up, as Caffe does, so that 32 -> 16 -> 8 and 224 -> 54 -> 27 -> 13 -> 6.

How the contract maps onto a network without a linear layer: the last mlpconv's third 1x1 convolution, the one
with num_classes outputs, is the classifier (`classifier`, an nn.Conv2d). forward_features returns the 192-channel
(1024 for ImageNet) map that feeds it, and forward_head is that 1x1 convolution followed by global average pooling.
reset_classifier replaces it with a fresh 1x1 convolution. Deviation: the authors' Caffe models also apply a ReLU to
the class maps; we leave it out so that logits can be negative and head(F) = W GAP(F) + b exactly, which makes the
class-activation map of class c the paper's confidence map for c.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.layers import ConvBNAct, init_weights
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["MLPConvRow", "MLPConv", "NiN", "nin", "nin_imagenet"]

NIN_PAPER = Paper("Network in network", "Lin, Chen, Yan", 2013, "1312.4400")


class MLPConvRow(NamedTuple):
    channels: tuple[int, ...]  # the kxk conv, then the 1x1 convs (the last row's final 1x1 conv is the classifier)
    kernel_size: int
    stride: int
    padding: int
    post: tuple[str, ...] = ()  # after the block, in order: "pool" (3x3/2 max), "dropout"


NIN_CIFAR = [
    MLPConvRow((192, 160, 96), 5, 1, 2, post=("pool", "dropout")),
    MLPConvRow((192, 192, 192), 5, 1, 2, post=("pool", "dropout")),
    MLPConvRow((192, 192), 3, 1, 1),  # + classifier: 1x1 conv to num_classes
]
NIN_IMAGENET = [
    MLPConvRow((96, 96, 96), 11, 4, 0, post=("pool",)),
    MLPConvRow((256, 256, 256), 5, 1, 2, post=("pool",)),
    MLPConvRow((384, 384, 384), 3, 1, 1, post=("pool", "dropout")),
    MLPConvRow((1024, 1024), 3, 1, 1),  # + classifier: 1x1 conv to num_classes
]


class MLPConv(nn.Sequential):
    """kxk conv + ReLU, then 1x1 conv + ReLU for each further width."""

    def __init__(self, in_channels: int, row: MLPConvRow):
        first = ConvBNAct(in_channels, row.channels[0], row.kernel_size, row.stride, row.padding, norm=False)
        rest = [ConvBNAct(a, b, 1, norm=False) for a, b in zip(row.channels, row.channels[1:])]
        super().__init__(first, *rest)


class NiN(ZooModel):
    """Network in Network: mlpconv blocks, max pooling, dropout, a 1x1 class conv and global average pooling.

    Args:
        rows: one MLPConvRow per mlpconv layer.
        num_classes: channels of the class maps.
        in_chans: input channels.
        dropout: dropout probability after the blocks whose row says "dropout".
    """

    cam_layer = "features"
    classifier_path = "classifier"

    def __init__(self, rows: Sequence[MLPConvRow], num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, row in enumerate(rows, 1):
            layers[f"mlpconv{i}"] = MLPConv(in_chans, row)
            for op in row.post:
                layers[f"{op}{i}"] = nn.MaxPool2d(3, 2, ceil_mode=True) if op == "pool" else nn.Dropout(dropout)
            in_chans = row.channels[-1]
        self.features = nn.Sequential(layers)
        self.classifier = nn.Conv2d(in_chans, num_classes, 1)
        self.num_features, self.num_classes = in_chans, num_classes
        self.stage_names = tuple(f"features.mlpconv{i}" for i in range(1, len(rows) + 1))
        self.apply(partial(init_weights, conv_mode="fan_in"))  # no BN: keep the forward scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).mean((2, 3))  # class maps N x K x H x W -> logits N x K

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the class-map convolution (NiN has no linear layer) by a fresh 1x1 one with num_classes outputs."""
        old = self.get_classifier()
        new = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        parent, _, leaf = self.classifier_path.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        self.num_classes = num_classes




register = partial(register_model, "NiN", NIN_PAPER)


@register(input_size=(3, 32, 32), num_classes=10)
def nin(num_classes: int = 10, **kwargs) -> NiN:
    """Network in Network for CIFAR-10: three mlpconv layers, global average pooling, no FC layer."""
    return NiN(NIN_CIFAR, num_classes, **kwargs)


@register()
def nin_imagenet(**kwargs) -> NiN:
    """Network in Network for ImageNet (the authors' Caffe model): four mlpconv layers, no FC layer."""
    return NiN(NIN_IMAGENET, **kwargs)
