"""ShuffleNet V1 and V2.

- V1: Zhang, Zhou, Lin & Sun (2018), "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
  Devices", arXiv:1707.01083. Table 1: conv 3x3/2 (24), max pool 3x3/2, three stages of ShuffleNet units
  (Fig. 2: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1; the stride-2 unit concatenates a 3x3/2
  average-pooled shortcut), global pool, FC. The bottleneck is 1/4 of a unit's output channels and the first
  1x1 of Stage 2 is not grouped (section 3.3). "ShuffleNet s x" scales the number of filters by s.
- V2: Ma, Zhang, Zheng & Sun (2018), "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
  arXiv:1807.11164. Table 5; units of Fig. 3(c)/(d) (channel split, concat, shuffle), torchvision's module names so
  that its weights load.

``small_input=True`` makes the stem stride 1 and drops the max pool, for 32x32 images.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ChannelShuffle, ConvBNAct, channel_shuffle, init_weights, make_divisible
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

SHUFFLENET_V1 = Paper(
    "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
    "Zhang, Zhou, Lin, Sun",
    2018,
    "1707.01083",
)
SHUFFLENET_V2 = Paper(
    "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
    "Ma, Zhang, Zheng, Sun",
    2018,
    "1807.11164",
)

# ShuffleNet V1, Table 1: output channels of Stages 2, 3, 4 for each number of groups g (at 1x).
V1_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}
V1_REPEATS = (4, 8, 4)  # units per stage, the first of each with stride 2
V1_STEM = 24

# ShuffleNet V2, Table 5: units per stage (the first with stride 2), and output channels of
# conv1, Stages 2-4 and conv5 for each scale.
V2_REPEATS = (4, 8, 4)
V2_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit (Fig. 2b/c): out = ReLU(shortcut(x) + branch(x)) at stride 1, or
    ReLU(cat(avgpool3x3/2(x), branch(x))) at stride 2, where the branch produces out - in channels."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, first_grouped: bool = True):
        super().__init__()
        self.concat = stride == 2
        mid = out_channels // 4
        branch_out = out_channels - in_channels if self.concat else out_channels
        self.branch = nn.Sequential(
            ConvBNAct(in_channels, mid, 1, groups=groups if first_grouped else 1),
            ChannelShuffle(groups),
            ConvBNAct(mid, mid, 3, stride, groups=mid, act=None),  # no ReLU after the depthwise conv (section 3.2)
            ConvBNAct(mid, branch_out, 1, groups=groups, act=None),
        )
        self.shortcut = nn.AvgPool2d(3, 2, 1) if self.concat else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.concat:
            return self.act(torch.cat((self.shortcut(x), out), 1))
        return self.act(self.shortcut(x) + out)


class ShuffleNetV1(ZooModel):
    """ShuffleNet V1 with g groups and scale factor s (Table 1 and section 3.3)."""

    stage_names = ("conv1", "stage2", "stage3", "stage4")
    cam_layer = "stage4"
    classifier_path = "fc"
    channels_last = True

    def __init__(
        self,
        groups: int = 3,
        scale: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        small_input: bool = False,
    ):
        super().__init__()
        if groups not in V1_CHANNELS:
            raise UserError(f"ShuffleNet V1 has groups in {sorted(V1_CHANNELS)} (Table 1), not {groups}")
        if scale <= 0:
            raise UserError(f"ShuffleNet V1 scale must be positive, not {scale}")
        # Scaled widths are rounded so that every grouped 1x1 divides evenly: stage outputs to multiples of 4g
        # (the bottleneck is 1/4 of them), the stem to multiples of g; at s=1 this leaves Table 1 unchanged.
        channels = make_divisible(V1_STEM * scale, groups)
        self.conv1 = ConvBNAct(in_chans, channels, 3, 1 if small_input else 2)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        for i, (repeats, width) in enumerate(zip(V1_REPEATS, V1_CHANNELS[groups])):
            out = make_divisible(width * scale, 4 * groups)
            units = [ShuffleV1Unit(channels, out, groups, 2, first_grouped=i > 0)]
            units += [ShuffleV1Unit(out, out, groups, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            channels = out
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.num_classes, self.num_features = num_classes, channels
        self.apply(init_weights)  # torchvision's: He fan_out, N(0, 0.01) linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.stage4(self.stage3(self.stage2(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean((2, 3))))


def _depthwise_bn(channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels)]


def _pointwise_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 unit. Stride 1 (Fig. 3c): split the channels in two halves, transform one, concat, shuffle.
    Stride 2 (Fig. 3d): both branches see all of x and halve the resolution, so channels double.

    The branches are flat Sequentials, as torchvision's, so that its state_dict keys match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        if stride == 1 and in_channels != 2 * half:
            raise ValueError(f"a stride-1 ShuffleNet V2 unit keeps its channels, got {in_channels} -> {out_channels}")
        if stride > 1:
            self.branch1 = nn.Sequential(*_depthwise_bn(in_channels, stride), *_pointwise_bn_relu(in_channels, half))
        else:
            self.branch1 = nn.Sequential()
        branch2_in = in_channels if stride > 1 else half
        self.branch2 = nn.Sequential(
            *_pointwise_bn_relu(branch2_in, half), *_depthwise_bn(half, stride), *_pointwise_bn_relu(half, half)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(ZooModel):
    """ShuffleNet V2 (Table 5); torchvision's module names."""

    stage_names = ("conv1", "stage2", "stage3", "stage4", "conv5")
    cam_layer = "conv5"
    classifier_path = "fc"
    channels_last = True

    def __init__(
        self,
        scale: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        small_input: bool = False,
    ):
        super().__init__()
        if scale not in V2_CHANNELS:
            raise UserError(f"ShuffleNet V2 has scales {sorted(V2_CHANNELS)} (Table 5), not {scale}")
        stem, *stage_channels, last = V2_CHANNELS[scale]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, 1 if small_input else 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        channels = stem
        for i, (repeats, out) in enumerate(zip(V2_REPEATS, stage_channels)):
            units = [ShuffleV2Unit(channels, out, 2)] + [ShuffleV2Unit(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            channels = out
        self.conv5 = nn.Sequential(*_pointwise_bn_relu(channels, last))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)
        self.num_classes, self.num_features = num_classes, last
        self.apply(init_weights)  # torchvision's: He fan_out, N(0, 0.01) linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.stage4(self.stage3(self.stage2(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean((2, 3))))




register_v1 = partial(register_model, "ShuffleNetV1", SHUFFLENET_V1, small_input=True)
register_v2 = partial(register_model, "ShuffleNetV2", SHUFFLENET_V2, small_input=True)


@register_v1()
def shufflenet_v1_g1(**kwargs) -> ShuffleNetV1:
    """ShuffleNet V1 1x with g=1 (pass scale for 0.5x/1.5x/2x)."""
    return ShuffleNetV1(1, **kwargs)


@register_v1()
def shufflenet_v1_g2(**kwargs) -> ShuffleNetV1:
    """ShuffleNet V1 1x with g=2 (pass scale for 0.5x/1.5x/2x)."""
    return ShuffleNetV1(2, **kwargs)


@register_v1()
def shufflenet_v1_g3(**kwargs) -> ShuffleNetV1:
    """ShuffleNet V1 1x with g=3 (pass scale for 0.5x/1.5x/2x)."""
    return ShuffleNetV1(3, **kwargs)


@register_v1()
def shufflenet_v1_g4(**kwargs) -> ShuffleNetV1:
    """ShuffleNet V1 1x with g=4 (pass scale for 0.5x/1.5x/2x)."""
    return ShuffleNetV1(4, **kwargs)


@register_v1()
def shufflenet_v1_g8(**kwargs) -> ShuffleNetV1:
    """ShuffleNet V1 1x with g=8 (pass scale for 0.5x/1.5x/2x)."""
    return ShuffleNetV1(8, **kwargs)


@register_v2()
def shufflenet_v2_x0_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 0.5x, torchvision-compatible."""
    return ShuffleNetV2(0.5, **kwargs)


@register_v2()
def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1x, torchvision-compatible."""
    return ShuffleNetV2(1.0, **kwargs)


@register_v2()
def shufflenet_v2_x1_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x, torchvision-compatible."""
    return ShuffleNetV2(1.5, **kwargs)


@register_v2()
def shufflenet_v2_x2_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 2x, torchvision-compatible."""
    return ShuffleNetV2(2.0, **kwargs)
