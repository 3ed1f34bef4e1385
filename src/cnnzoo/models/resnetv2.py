"""ResNetV2 as keras.applications ships it: He, Zhang, Ren, Sun (2016), "Identity mappings in deep residual
networks", arXiv:1603.05027, in the layout of keras.applications.resnet_v2 (ResNet50V2, ResNet101V2, ResNet152V2).

Pre-activation bottlenecks (Fig. 1b / 4e of the paper: BN-ReLU before every convolution of the residual branch, a
clean identity path), built the way Keras' ``stack2``/``block2`` build them:

- the stride of a stage sits on its LAST unit (on that unit's 3x3 convolution), and that unit's shortcut is a 1x1
  max pool of stride 2, i.e. plain subsampling; stages 1-3 halve the map at their end, stage 4 keeps it (7x7);
- the FIRST unit of every stage has a 1x1 convolution shortcut (with bias) that reads the pre-activated input;
- the last 1x1 convolution of every unit has a bias, the other two do not; BatchNorm eps 1.001e-5;
- the stem is a 7x7/2 convolution with bias and no BN-ReLU (the first unit's pre-activation follows it), then a
  3x3/2 max pool over a zero-padded map (Keras' ZeroPadding2D + MaxPooling2D; the map is not rectified yet, so zero
  padding differs from PyTorch's -inf padding at the border);
- the last stage ends with the BN-ReLU that precedes global average pooling (``layer4.norm``, ``layer4.act``).

How this differs from cnnzoo's ``preact_resnet50`` (models/resnet.py), which follows the paper's torchvision-like
ImageNet layout: there the stride sits on the FIRST unit of stages 2-4 (with a projection shortcut in that unit
only), the stem is a bias-free 7x7 convolution with an ordinary max pool, no convolution has a bias, and the
first stage's first unit projects 64 -> 256 channels. Same depths (3-4-6-3), same 2048-wide output; 25,549,352
parameters there against 25,568,360 here.

Parameters at 1000 classes equal Keras' exactly: Keras counts BatchNorm's moving mean and variance as
(non-trainable) parameters, which are buffers in PyTorch:

    model         trainable (nn.Parameters)   + BN running stats   = Keras "Total params"
    resnet50v2    25,568,360                  45,440               25,613,800
    resnet101v2   44,577,896                  97,664               44,675,560
    resnet152v2   60,236,904                  143,744              60,380,648
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import DropPath, init_weights
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["ResNetV2", "BottleneckV2", "KERAS_V2_DEPTHS", "KERAS_V2_STRIDES"]

PREACT = Paper("Identity mappings in deep residual networks", "He, Zhang, Ren, Sun", 2016, "1603.05027")
register = partial(register_model, "ResNetV2 (Keras)", PREACT)

# keras.applications.resnet_v2: units per stage (conv2_x .. conv5_x) of ResNet50V2 / 101V2 / 152V2
KERAS_V2_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
KERAS_V2_PLANES = (64, 128, 256, 512)  # 3x3 filters per stage; units output 4x that
KERAS_V2_STRIDES = (2, 2, 2, 1)  # stack2's stride1, applied by the LAST unit of each stage
BN_EPS = 1.001e-5  # Keras' ResNet epsilon


class BottleneckV2(nn.Module):
    """Keras' ``block2``: BN-ReLU, then 1x1 (no bias), BN-ReLU, 3x3 with the unit's stride (no bias), BN-ReLU, 1x1
    expand by 4 (with bias); added to a shortcut that is a 1x1 convolution of the pre-activated input (with bias,
    ``conv_shortcut``), a stride-2 subsampling of the raw input, or the raw input itself."""

    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, conv_shortcut: bool = False, drop_path: float = 0.0
    ):
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        if conv_shortcut:
            self.downsample: nn.Module = nn.Conv2d(in_channels, out_channels, 1, stride)
        else:  # Keras: MaxPooling2D(1, strides=stride) when strided, else the input itself
            self.downsample = nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity()
        self.project = conv_shortcut
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # Keras: ZeroPadding2D(1) + "valid"
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv3 = nn.Conv2d(planes, out_channels, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.bn1(x))
        shortcut = self.downsample(preact) if self.project else self.downsample(x)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return self.drop_path(out) + shortcut


class ResNetV2(ZooModel):
    """ResNetV2 in keras.applications' layout: stem, layer1..layer4 of pre-activation bottlenecks, BN-ReLU, pool, fc.

    Args:
        layers: units per stage (KERAS_V2_DEPTHS).
        num_classes: classifier outputs.
        in_chans: input channels.
        dropout: before the classifier (Keras has none).
        drop_path_rate: stochastic depth, the drop probability of the last unit (linear in depth).
    """

    classifier_path = "fc"
    stage_names = ("conv1", "layer1", "layer2", "layer3", "layer4")
    cam_layer = "layer4"

    def __init__(
        self,
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise UserError(f"drop_path_rate must be in [0, 1), not {drop_path_rate}")
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3)  # Keras: ZeroPadding2D(3) + 7x7/2 "valid", with bias
        self.maxpool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))
        in_channels, total, index = 64, sum(layers), 0
        for stage, (planes, count, stride) in enumerate(zip(KERAS_V2_PLANES, layers, KERAS_V2_STRIDES)):
            units = []
            for i in range(count):
                index += 1
                last = i == count - 1
                drop_path = drop_path_rate * index / total
                units.append(BottleneckV2(in_channels, planes, stride if last else 1, i == 0, drop_path))
                in_channels = planes * BottleneckV2.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*units))
        self.layer4.add_module("norm", nn.BatchNorm2d(in_channels, eps=BN_EPS))  # Keras' post_bn, post_relu
        self.layer4.add_module("act", nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)
        self.num_classes, self.num_features = num_classes, in_channels
        self.apply(partial(init_weights, conv_mode="fan_in", linear_std=None))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))  # N x 64 x 56 x 56
        x = self.layer1(x)  # N x 256 x 28 x 28 (the stride is on the stage's last unit)
        x = self.layer2(x)  # N x 512 x 14 x 14
        x = self.layer3(x)  # N x 1024 x 7 x 7
        return self.layer4(x)  # N x 2048 x 7 x 7, after the final BN-ReLU

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


@register()
def resnet50v2(**kwargs) -> ResNetV2:
    """ResNet50V2 as keras.applications.ResNet50V2 (pre-activation, stride on each stage's last unit)."""
    return ResNetV2(KERAS_V2_DEPTHS[50], **kwargs)


@register()
def resnet101v2(**kwargs) -> ResNetV2:
    """ResNet101V2 as keras.applications.ResNet101V2 (pre-activation, stride on each stage's last unit)."""
    return ResNetV2(KERAS_V2_DEPTHS[101], **kwargs)


@register()
def resnet152v2(**kwargs) -> ResNetV2:
    """ResNet152V2 as keras.applications.ResNet152V2 (pre-activation, stride on each stage's last unit)."""
    return ResNetV2(KERAS_V2_DEPTHS[152], **kwargs)
