"""VGG: Simonyan & Zisserman (2014), "Very deep convolutional networks for large-scale image recognition",
arXiv:1409.1556.

All six configurations of the paper's Table 1 come from one table, CFGS: A (vgg11), A-LRN (vgg11_lrn), B (vgg13),
C (vgg16_c, whose last conv in blocks 3-5 is 1x1), D (vgg16) and E (vgg19); every block ends with a 2x2 max pool.
The `_bn` variants put batch normalisation after every convolution (not in the paper, which predates it; as in
torchvision). Parameters at 1000 classes agree with the paper's Table 2 (133, 133, 134, 138, 144 million).

Module names and layout are torchvision's (a flat `features`, an adaptive 7x7 average pool, `classifier` with
dropout after fc6 and fc7), so torchvision state_dicts load strictly; the adaptive pool lets other input sizes
through. Weight initialisation is torchvision's (He normal for convolutions, N(0, 0.01) for linear layers); the
paper initialised the deeper nets from a trained configuration A.

``small_input=True`` adapts the network to 32x32 images: the pool after the first block (the stem pool) is dropped,
so a 32x32 image reaches block 5 at 4x4 and leaves it at 2x2; the head pools to 1x1 and its hidden layers are 512
wide (the CIFAR VGG of Zagoruyko's cifar.torch) instead of 4096 over 7x7 positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from cnnzoo.layers import LocalResponseNorm, init_weights
from cnnzoo.models.alexnet import PAPER_LRN
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["CFGS", "VGG", "make_layers"]

VGG_PAPER = Paper(
    "Very deep convolutional networks for large-scale image recognition", "Simonyan, Zisserman", 2014, "1409.1556"
)

# Table 1, one row per configuration, one list per block (each block ends with a 2x2 max pool).
# c: conv3-c    (c, 1): conv1-c    "LRN": local response normalisation with AlexNet's constants
#          block 1        block 2      block 3                 block 4                 block 5
CFGS: dict[str, list[list[int | tuple[int, int] | str]]] = {
    "A":     [[64],         [128],       [256, 256],             [512, 512],             [512, 512]],
    "A-LRN": [[64, "LRN"],  [128],       [256, 256],             [512, 512],             [512, 512]],
    "B":     [[64, 64],     [128, 128],  [256, 256],             [512, 512],             [512, 512]],
    "C":     [[64, 64],     [128, 128],  [256, 256, (256, 1)],   [512, 512, (512, 1)],   [512, 512, (512, 1)]],
    "D":     [[64, 64],     [128, 128],  [256, 256, 256],        [512, 512, 512],        [512, 512, 512]],
    "E":     [[64, 64],     [128, 128],  [256, 256, 256, 256],   [512, 512, 512, 512],   [512, 512, 512, 512]],
}  # fmt: skip


Config = Sequence[Sequence[int | tuple[int, int] | str]]


def make_layers(
    cfg: Config, in_chans: int = 3, batch_norm: bool = False, stem_pool: bool = True
) -> tuple[nn.Sequential, list[int]]:
    """The flat torchvision `features` (conv, [BN], ReLU, ..., pool) and the index of each block's first layer."""
    layers: list[nn.Module] = []
    starts = []
    for b, block in enumerate(cfg):
        starts.append(len(layers))
        for entry in block:
            if entry == "LRN":
                layers.append(LocalResponseNorm(**PAPER_LRN))
                continue
            out_chans, kernel = entry if isinstance(entry, tuple) else (entry, 3)
            layers.append(nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2))
            layers += [nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
            in_chans = out_chans
        if b > 0 or stem_pool:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers), starts


class VGG(ZooModel):
    """VGG from a Table-1 configuration.

    Args:
        cfg: one of CFGS (a list of blocks).
        num_classes: outputs of the last FC layer.
        in_chans: input channels.
        batch_norm: batch normalisation after every convolution.
        dropout: dropout after fc6 and fc7.
        small_input: 32x32 images: no pool after block 1, a 1x1 pooled map and 512-wide FC layers.
    """

    cam_layer = "features"
    classifier_path = "classifier.6"

    def __init__(
        self,
        cfg: Config,
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        dropout: float = 0.5,
        small_input: bool = False,
    ):
        super().__init__()
        self.features, starts = make_layers(cfg, in_chans, batch_norm, stem_pool=not small_input)
        pooled, hidden = (1, 512) if small_input else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.num_features = 512
        self.classifier = nn.Sequential(
            nn.Linear(self.num_features * pooled * pooled, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes
        # The paper's five conv blocks, then fc6 and fc7. A stage is named by its first layer: torchvision's flat
        # `features` has no per-block container, and fine-tuning trains everything from a stage's first layer on.
        self.stage_names = tuple(f"features.{i}" for i in starts) + ("classifier.0", "classifier.3")
        self.apply(init_weights)  # torchvision's: He fan_out, N(0, 0.01) linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))




register = partial(register_model, "VGG", VGG_PAPER, small_input=True)


@register()
def vgg11(**kwargs) -> VGG:
    """VGG-11, configuration A: 8 conv and 3 FC layers."""
    return VGG(CFGS["A"], **kwargs)


@register()
def vgg11_bn(**kwargs) -> VGG:
    """VGG-11 (configuration A) with batch normalisation."""
    return VGG(CFGS["A"], batch_norm=True, **kwargs)


@register()
def vgg11_lrn(**kwargs) -> VGG:
    """VGG-11 A-LRN: configuration A with local response normalisation after the first conv."""
    return VGG(CFGS["A-LRN"], **kwargs)


@register()
def vgg13(**kwargs) -> VGG:
    """VGG-13, configuration B: 10 conv and 3 FC layers."""
    return VGG(CFGS["B"], **kwargs)


@register()
def vgg13_bn(**kwargs) -> VGG:
    """VGG-13 (configuration B) with batch normalisation."""
    return VGG(CFGS["B"], batch_norm=True, **kwargs)


@register()
def vgg16_c(**kwargs) -> VGG:
    """VGG-16 configuration C: the last conv of blocks 3-5 is 1x1."""
    return VGG(CFGS["C"], **kwargs)


@register()
def vgg16(**kwargs) -> VGG:
    """VGG-16, configuration D: 13 conv and 3 FC layers."""
    return VGG(CFGS["D"], **kwargs)


@register()
def vgg16_bn(**kwargs) -> VGG:
    """VGG-16 (configuration D) with batch normalisation."""
    return VGG(CFGS["D"], batch_norm=True, **kwargs)


@register()
def vgg19(**kwargs) -> VGG:
    """VGG-19, configuration E: 16 conv and 3 FC layers."""
    return VGG(CFGS["E"], **kwargs)


@register()
def vgg19_bn(**kwargs) -> VGG:
    """VGG-19 (configuration E) with batch normalisation."""
    return VGG(CFGS["E"], batch_norm=True, **kwargs)
