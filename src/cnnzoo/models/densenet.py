"""DenseNet: Huang, Liu, van der Maaten & Weinberger (2017), "Densely connected convolutional networks",
arXiv:1608.06993.

Within a dense block, layer l sees the concatenation of the block input and the outputs of all earlier layers and
adds k (the growth rate) feature maps. DenseNet-B layers are BN-ReLU-Conv(1x1, 4k)-BN-ReLU-Conv(3x3, k); plain
DenseNet layers are BN-ReLU-Conv(3x3, k). Transition layers between blocks are BN-ReLU-Conv(1x1)-AvgPool(2x2) and
keep a fraction theta of the channels (DenseNet-C: theta = 0.5). The network ends with BN-ReLU, global average
pooling and one linear layer.

ImageNet (Table 1, DenseNet-BC, k=32 or 48; 7x7 stride-2 conv and 3x3 stride-2 max pool stem): densenet121/161/
169/201, with torchvision's module names, so torchvision state_dicts load strictly. Files in torchvision's older
key pattern (``denselayer1.norm.1.weight``, as in its published weights) are renamed on load by a pre-hook.
``memory_efficient=True`` recomputes each layer's concatenation, BN and first convolution in the backward pass
(torch.utils.checkpoint), trading compute for memory as in torchvision (Pleiss et al. 2017).
``small_input=True`` replaces the stem by a 3x3 stride-1 conv (BN, ReLU, no pool), so 32x32 images reach the
last block at 4x4.

CIFAR (section 3, "Implementation details"; a 3x3 conv stem and three dense blocks on 32x32, 16x16 and 8x8 maps):
densenet_bc100_k12 (DenseNet-BC, L=100, k=12: 16 bottleneck layers per block, 2k=24 stem channels, theta=0.5) has
769,162 parameters at 10 classes and 800,032 at 100, the paper's 0.8M (Table 2 gives one figure for both data sets);
densenet40_k12 (plain DenseNet, L=40, k=12: 12 layers per block, 16 stem channels, theta=1) has 1,019,722 at 10
classes and 1,060,132 at 100, the paper's 1.0M rounded to one decimal.
The paper's 0.2 dropout without data augmentation is ``drop_rate=0.2``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["DenseNetConfig", "DENSENETS", "DenseLayer", "BottleneckLayer", "DenseBlock", "Transition", "DenseNet"]

DENSENET_PAPER = Paper(
    "Densely connected convolutional networks", "Huang, Liu, van der Maaten, Weinberger", 2017, "1608.06993"
)


class DenseNetConfig(NamedTuple):
    growth_rate: int  # k
    block_config: tuple[int, ...]  # layers per dense block
    num_init_features: int  # channels of the stem convolution
    bn_size: int = 4  # bottleneck width in units of k (DenseNet-B); 0: plain layers, no bottleneck
    compression: float = 0.5  # theta of the transition layers
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max pool; "cifar": one 3x3 conv


DENSENETS = {
    #                                    k   layers per block  stem  B  theta  stem type
    "densenet121":        DenseNetConfig(32, (6, 12, 24, 16),  64),
    "densenet161":        DenseNetConfig(48, (6, 12, 36, 24),  96),
    "densenet169":        DenseNetConfig(32, (6, 12, 32, 32),  64),
    "densenet201":        DenseNetConfig(32, (6, 12, 48, 32),  64),
    "densenet_bc100_k12": DenseNetConfig(12, (16, 16, 16),     24,   4, 0.5,   "cifar"),
    "densenet40_k12":     DenseNetConfig(12, (12, 12, 12),     16,   0, 1.0,   "cifar"),
}  # fmt: skip


class _DenseLayerBase(nn.Module):
    """The shared forward of both layer types: a list of earlier feature maps in, k new maps out. Subclasses own
    norm1, relu1, conv1 (applied to the concatenation) and may override ``rest``."""

    def __init__(self, drop_rate: float, memory_efficient: bool):
        super().__init__()
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def concat_part(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.unused
    def checkpointed(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return cp.checkpoint(lambda *xs: self.concat_part(list(xs)), *inputs, use_reentrant=False)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and not torch.jit.is_scripting() and _needs_grad(inputs):
            x = self.checkpointed(inputs)
        else:
            x = self.concat_part(inputs)
        x = self.rest(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


def _needs_grad(tensors: list[torch.Tensor]) -> bool:
    for t in tensors:
        if t.requires_grad:
            return True
    return False


class DenseLayer(_DenseLayerBase):
    """Plain DenseNet layer: BN-ReLU-Conv(3x3, k) on the concatenation of all earlier maps."""

    def __init__(self, in_channels: int, growth_rate: int, drop_rate: float = 0.0, memory_efficient: bool = False):
        super().__init__(drop_rate, memory_efficient)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)


class BottleneckLayer(_DenseLayerBase):
    """DenseNet-B layer, torchvision's _DenseLayer: BN-ReLU-Conv(1x1, bn_size*k)-BN-ReLU-Conv(3x3, k)."""

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ):
        super().__init__(drop_rate, memory_efficient)
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, 3, padding=1, bias=False)

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """num_layers dense layers (denselayer1, ...); the output concatenates the input and every layer's maps."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ):
        super().__init__()
        for i in range(num_layers):
            channels = in_channels + i * growth_rate
            if bn_size:
                layer = BottleneckLayer(channels, growth_rate, bn_size, drop_rate, memory_efficient)
            else:
                layer = DenseLayer(channels, growth_rate, drop_rate, memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # N x (C_in + num_layers * k) x H x W


class Transition(nn.Sequential):
    """BN-ReLU-Conv(1x1)-AvgPool(2x2/2) between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


def _stem(cfg: DenseNetConfig, in_chans: int, small_input: bool) -> OrderedDict[str, nn.Module]:
    c = cfg.num_init_features
    if cfg.stem == "cifar":  # the dense block's first BN-ReLU follows the conv directly
        return OrderedDict(conv0=nn.Conv2d(in_chans, c, 3, padding=1, bias=False))
    if small_input:
        conv = nn.Conv2d(in_chans, c, 3, padding=1, bias=False)
        return OrderedDict(conv0=conv, norm0=nn.BatchNorm2d(c), relu0=nn.ReLU(inplace=True))
    conv = nn.Conv2d(in_chans, c, 7, stride=2, padding=3, bias=False)
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    return OrderedDict(conv0=conv, norm0=nn.BatchNorm2d(c), relu0=nn.ReLU(inplace=True), pool0=pool)


class DenseNet(ZooModel):
    """DenseNet from a DenseNetConfig.

    Args:
        cfg: growth rate, layers per block, stem width, bottleneck width, compression, stem type.
        num_classes: outputs of the linear classifier.
        in_chans: input channels.
        drop_rate: dropout after each dense layer.
        memory_efficient: checkpoint the concatenation-BN-ReLU-conv of each layer (less memory, slower).
        small_input: 3x3 stride-1 stem without max pool, for 32x32 images (ImageNet configurations).
    """

    cam_layer = "features"
    classifier_path = "classifier"

    def __init__(
        self,
        cfg: DenseNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        small_input: bool = False,
    ):
        super().__init__()
        self.features = nn.Sequential(_stem(cfg, in_chans, small_input))
        stages = ["features.conv0"]
        channels = cfg.num_init_features
        for i, num_layers in enumerate(cfg.block_config, 1):
            block = DenseBlock(num_layers, channels, cfg.growth_rate, cfg.bn_size, drop_rate, memory_efficient)
            self.features.add_module(f"denseblock{i}", block)
            stages.append(f"features.denseblock{i}")
            channels += num_layers * cfg.growth_rate
            if i < len(cfg.block_config):
                out_channels = int(channels * cfg.compression)
                self.features.add_module(f"transition{i}", Transition(channels, out_channels))
                stages.append(f"features.transition{i}")
                channels = out_channels
        # torchvision calls the final norm norm5 whatever the number of blocks; its ReLU is applied functionally
        # after `features`. As a module (no state) it makes forward_features, the map CAM reads, the rectified one
        # that global pooling sees.
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.classifier = nn.Linear(channels, num_classes)
        self.num_features, self.num_classes = channels, num_classes
        self.stage_names = tuple(stages)  # Table 1's rows: stem, then each dense block and transition
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def rename_state_keys(self, state_dict: dict, prefix: str) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if match := _LEGACY_KEY.match(key):
                state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.rename_state_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _init_weights(m: nn.Module) -> None:
    # torchvision's ("official init from torch repo") initialisation.
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)


# torchvision's published DenseNet weights predate the ban on dots in module names: norm.1 for norm1, etc.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


register = partial(register_model, "DenseNet", DENSENET_PAPER)


@register(small_input=True)
def densenet121(**kwargs) -> DenseNet:
    """DenseNet-121 (DenseNet-BC, k=32, blocks 6-12-24-16), torchvision-compatible."""
    return DenseNet(DENSENETS["densenet121"], **kwargs)


@register(small_input=True)
def densenet161(**kwargs) -> DenseNet:
    """DenseNet-161 (DenseNet-BC, k=48, blocks 6-12-36-24), torchvision-compatible."""
    return DenseNet(DENSENETS["densenet161"], **kwargs)


@register(small_input=True)
def densenet169(**kwargs) -> DenseNet:
    """DenseNet-169 (DenseNet-BC, k=32, blocks 6-12-32-32), torchvision-compatible."""
    return DenseNet(DENSENETS["densenet169"], **kwargs)


@register(small_input=True)
def densenet201(**kwargs) -> DenseNet:
    """DenseNet-201 (DenseNet-BC, k=32, blocks 6-12-48-32), torchvision-compatible."""
    return DenseNet(DENSENETS["densenet201"], **kwargs)


@register(input_size=(3, 32, 32), num_classes=10)
def densenet_bc100_k12(num_classes: int = 10, **kwargs) -> DenseNet:
    """DenseNet-BC for CIFAR: L=100, k=12, three blocks of 16 bottleneck layers, about 0.8M parameters."""
    return DenseNet(DENSENETS["densenet_bc100_k12"], num_classes, **kwargs)


@register(input_size=(3, 32, 32), num_classes=10)
def densenet40_k12(num_classes: int = 10, **kwargs) -> DenseNet:
    """DenseNet for CIFAR: L=40, k=12, three blocks of 12 plain layers, no compression, about 1.0M parameters."""
    return DenseNet(DENSENETS["densenet40_k12"], num_classes, **kwargs)
