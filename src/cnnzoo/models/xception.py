"""Xception: Chollet (2017), "Xception: deep learning with depthwise separable convolutions", arXiv:1610.02357.

Figure 5 of the paper, the network of keras.applications.Xception: an entry flow (a 3x3/2 and a 3x3 convolution,
then three residual blocks that halve the map), a middle flow (eight residual blocks of three separable convolutions
at 728 channels, 19x19 at the default 299x299 input) and an exit flow (one more downsampling block, two separable
convolutions widening to 1536 and 2048, global average pooling, a linear classifier). A separable convolution is a
3x3 depthwise convolution followed directly by a 1x1 pointwise one, with no normalisation or activation between them
(section 3); every convolution is followed by batch normalisation. A downsampling block ends with a 3x3/2 max pool,
and its shortcut is a 1x1/2 convolution + BN; the middle flow's shortcuts are identities. The paper places
dropout 0.5 before the classifier for ImageNet (section 4.3); Keras' inference graph has none.

Module names, parameter order and arithmetic follow timm's ``legacy_xception`` (the Keras weights ported by Cadene),
so its state_dicts load strictly and give the same outputs. Two details of that port differ from Keras: PyTorch's
symmetric padding in the max pools (Keras' "same" pads only after an even-sized map, which moves block2's pool
windows by one pixel at 299x299), and BatchNorm's eps 1e-5 (Keras 1e-3). We keep timm's.

22,855,952 parameters at 1000 classes (Keras counts 22,910,480 with BatchNorm's 54,528 moving statistics), 8.4 G
MACs at 299x299.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.layers import init_weights
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["Xception", "XceptionRow", "SeparableConv2d", "XceptionBlock", "ENTRY_FLOW", "MIDDLE_FLOW", "EXIT_FLOW"]

XCEPTION = Paper("Xception: deep learning with depthwise separable convolutions", "Chollet", 2017, "1610.02357")
register = partial(register_model, "Xception", XCEPTION, input_size=(3, 299, 299))


class XceptionRow(NamedTuple):
    """One residual block of Figure 5."""

    in_channels: int
    out_channels: int
    reps: int  # separable convolutions on the residual branch
    stride: int  # 2: a 3x3/2 max pool ends the branch and the shortcut is a 1x1/2 convolution
    start_with_relu: bool = True  # False for the first block, whose input has just passed the stem's ReLU
    grow_first: bool = True  # widen at the first separable convolution (False: at the last one, block13 of Keras)


# Figure 5. The blocks are numbered block1..block12 across the three flows (timm's names; Keras calls them 2..13).
ENTRY_FLOW = [
    XceptionRow(64, 128, 2, 2, start_with_relu=False),  # 147x147 -> 74x74
    XceptionRow(128, 256, 2, 2),  # -> 37x37
    XceptionRow(256, 728, 2, 2),  # -> 19x19
]
MIDDLE_FLOW = [XceptionRow(728, 728, 3, 1)] * 8  # "repeated 8 times"
EXIT_FLOW = [XceptionRow(728, 1024, 2, 2, grow_first=False)]  # 728, 1024 -> 10x10
EXIT_CONVS = (1536, 2048)  # the two separable convolutions after the last block, each followed by BN-ReLU


class SeparableConv2d(nn.Module):
    """Depthwise kxk convolution, then a pointwise 1x1 one, both bias-free, nothing between them (section 3)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class XceptionBlock(nn.Module):
    """ReLU-SepConv-BN repeated ``reps`` times (a 3x3/2 max pool after them when strided), plus the shortcut.

    The layers sit in ``rep`` in timm's order (its indices are part of the state_dict keys); the block's first ReLU
    is not in-place because the shortcut still reads the block's input."""

    def __init__(self, row: XceptionRow):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(row.reps):
            if row.grow_first:
                in_ch, out_ch = (row.in_channels if i == 0 else row.out_channels), row.out_channels
            else:
                in_ch, out_ch = row.in_channels, (row.out_channels if i == row.reps - 1 else row.in_channels)
            layers += [nn.ReLU(inplace=i > 0), SeparableConv2d(in_ch, out_ch), nn.BatchNorm2d(out_ch)]
        if not row.start_with_relu:
            layers = layers[1:]
        if row.stride != 1:
            layers.append(nn.MaxPool2d(3, row.stride, 1))
        reshapes = row.stride != 1 or row.in_channels != row.out_channels
        self.skip = nn.Conv2d(row.in_channels, row.out_channels, 1, row.stride, bias=False) if reshapes else None
        self.skipbn = nn.BatchNorm2d(row.out_channels) if reshapes else None
        self.rep = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.skip is not None and self.skipbn is not None:
            shortcut = self.skipbn(self.skip(x))
        return self.rep(x) + shortcut


class Xception(ZooModel):
    """Xception (Figure 5): entry, middle and exit flows of depthwise-separable residual blocks.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        dropout: before the classifier (0.5 in the paper's ImageNet runs, section 4.3).
    """

    classifier_path = "fc"
    cam_layer = "act4"
    channels_last = True  # depthwise convolutions
    stage_names = (
        ("conv1", "bn1", "conv2", "bn2")
        + tuple(f"block{i + 1}" for i in range(len(ENTRY_FLOW + MIDDLE_FLOW + EXIT_FLOW)))
        + ("conv3", "bn3", "conv4", "bn4")
    )

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        # Entry flow stem: 3x3/2 32 and 3x3 64, both unpadded ("valid"): 299 -> 149 -> 147
        self.conv1 = nn.Conv2d(in_chans, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        for i, row in enumerate(ENTRY_FLOW + MIDDLE_FLOW + EXIT_FLOW):
            setattr(self, f"block{i + 1}", XceptionBlock(row))
        width, final = EXIT_CONVS
        self.conv3 = SeparableConv2d(EXIT_FLOW[-1].out_channels, width)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(width, final)
        self.bn4 = nn.BatchNorm2d(final)
        self.act4 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(final, num_classes)
        self.num_classes, self.num_features = num_classes, final
        self.apply(partial(init_weights, conv_mode="fan_in", linear_std=None))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))  # N x 32 x 149 x 149
        x = self.act2(self.bn2(self.conv2(x)))  # N x 64 x 147 x 147
        x = self.block3(self.block2(self.block1(x)))  # N x 728 x 19 x 19
        x = self.block7(self.block6(self.block5(self.block4(x))))
        x = self.block11(self.block10(self.block9(self.block8(x))))
        x = self.block12(x)  # N x 1024 x 10 x 10
        x = self.act3(self.bn3(self.conv3(x)))
        return self.act4(self.bn4(self.conv4(x)))  # N x 2048 x 10 x 10

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


@register()
def xception(**kwargs) -> Xception:
    """Xception (Figure 5; keras.applications.Xception, timm's legacy_xception layout), 299x299."""
    return Xception(**kwargs)
