"""FractalNet: Larsson, Maire & Shakhnarovich (2017), "FractalNet: ultra-deep neural networks without residuals",
arXiv:1605.07648.

A fractal block with C columns follows the expansion rule of section 2,

    f_1(z) = conv(z)        f_C(z) = join[ (f_{C-1} o f_{C-1})(z), conv(z) ]

where conv is 3x3 conv, batch norm, ReLU and join is the element-wise mean of its inputs. Joins that fall at the
same depth are one join (Figure 1), so the block's last join averages all C columns. A block has 2^C - 1
convolutions and its deepest column 2^(C-1). There are no residual connections: every signal passes a conv.

Drop-path (section 3.1), training only: local drop-path drops each input of a join with probability 0.15, keeping
at least one; global drop-path keeps a single column, the same in every block. As in the paper, each mini-batch is
global with probability 0.5 and local otherwise. In eval mode every join averages all its inputs. Dropped paths
are still computed and weighted by zero, so that every parameter gets a gradient and the shapes stay static.

`fractalnet` is the CIFAR network of section 4 with C=4 columns and B=5 blocks (40 layers on its deepest path):
channels 64, 128, 256, 512, 512, a 2x2 max pool after each block (the last one in the head, so that
forward_features keeps the 2x2 map), dropout 0, 0.1, 0.2, 0.3, 0.4 per block after each conv, and a linear
layer over the 512 pooled channels. It has 76,106,634 parameters at 10 classes.

Parameter count against the paper: Table 1 lists 38.6M for its 20-layer network (C=3) and 22.9M for its
40-layer one (C=4). The expansion rule with the stated widths gives 33.7M at C=3 (``columns=3``: 33,724,618), the
figure independent re-implementations also get (khanrc/pt.fractalnet reaches 38.9M only by adding a 1x1 conv that
doubles the channels at the entry of each block, which the paper's text does not describe). At C=4 the same widths
give 76.1M, so the paper's 22.9M 40-layer network must have been narrower, with widths the paper does not state;
we keep the stated widths. The Caffe release pools before the last join; we join, then pool, as the text says.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from cnnzoo.layers import ConvBNAct
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["FRACTAL_CIFAR", "FractalBlock", "FractalNet", "fractalnet"]

FRACTALNET_PAPER = Paper(
    "FractalNet: ultra-deep neural networks without residuals", "Larsson, Maire, Shakhnarovich", 2017, "1605.07648"
)

# Section 4 (CIFAR): one row per block: channels, dropout after each of its convs.
FRACTAL_CIFAR = [(64, 0.0), (128, 0.1), (256, 0.2), (512, 0.3), (512, 0.4)]


def conv_unit(in_channels: int, out_channels: int, dropout: float) -> ConvBNAct:
    unit = ConvBNAct(in_channels, out_channels, 3)
    if dropout > 0:
        unit.append(nn.Dropout(dropout))
    return unit


class FractalBlock(nn.Module):
    """f_C of the expansion rule: `conv` is the one-conv column, `first` and `second` the two nested f_{C-1}.

    Columns are numbered from the shallowest: column 0 is `conv`, columns 1..C-1 are those of the nested fractals.
    """

    def __init__(self, in_channels: int, out_channels: int, columns: int, dropout: float = 0.0, p_local: float = 0.15):
        super().__init__()
        self.columns, self.p_local = columns, p_local
        self.conv = conv_unit(in_channels, out_channels, dropout)
        if columns > 1:
            self.first = FractalBlock(in_channels, out_channels, columns - 1, dropout, p_local)
            self.second = FractalBlock(out_channels, out_channels, columns - 1, dropout, p_local)

    def paths(self, x: torch.Tensor, column: int) -> list[torch.Tensor]:
        """The inputs of this fractal's last join, deepest column first (column j at index C-1-j)."""
        if not hasattr(self, "first"):
            return [self.conv(x)]
        # The nested fractals number their columns from this one's column 1; -2 marks a branch that global
        # drop-path discards further on (column 0 keeps only self.conv), so its joins need no choice.
        inner = column - 1 if column >= 1 else (-2 if column == 0 else column)
        out = self.second.paths(self.first(x, inner), inner)
        out.append(self.conv(x))
        return out

    def join(self, paths: list[torch.Tensor], column: int = -1) -> torch.Tensor:
        """Element-wise mean. In training, column -1 is local drop-path (each input dropped with probability
        p_local, one always kept) and column c >= 0 global drop-path (only column c kept). Dropped inputs get weight
        0 rather than being skipped, so every parameter still receives a (zero) gradient."""
        stacked = torch.stack(paths)  # n x N x C x H x W
        n = len(paths)
        if not self.training or n == 1 or column == -2 or (column == -1 and self.p_local <= 0):
            return stacked.mean(0)
        if column >= 0:
            keep = torch.zeros(n)
            keep[n - 1 - column] = 1.0
        else:
            keep = (torch.rand(n) >= self.p_local).float()  # CPU draws: no device synchronisation
            if not bool(keep.any()):
                keep[int(torch.randint(n, (1,)))] = 1.0
        weights = (keep / keep.sum()).to(device=stacked.device, dtype=stacked.dtype)
        return (stacked * weights.view(n, 1, 1, 1, 1)).sum(0)

    def forward(self, x: torch.Tensor, column: int = -1) -> torch.Tensor:
        return self.join(self.paths(x, column), column)


class FractalStage(nn.Module):
    """A fractal block followed by its 2x2 max pool (identity for the last block, whose pool is in the head)."""

    def __init__(self, block: FractalBlock, pool: bool):
        super().__init__()
        self.fractal = block
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor, column: int) -> torch.Tensor:
        return self.pool(self.fractal(x, column))


class FractalNet(ZooModel):
    """B fractal blocks of C columns, max pooling between them, a linear classifier.

    Args:
        blocks: one (channels, dropout) row per block.
        columns: C, the number of columns of every block.
        num_classes: outputs of the classifier.
        in_chans: input channels.
        p_local: local drop-path probability of each join input.
        p_global: fraction of training mini-batches that use global drop-path (a single column).
    """

    cam_layer = ""  # set per instance: the last stage
    classifier_path = "fc"

    def __init__(
        self,
        blocks: Sequence[tuple[int, float]] = FRACTAL_CIFAR,
        columns: int = 4,
        num_classes: int = 10,
        in_chans: int = 3,
        p_local: float = 0.15,
        p_global: float = 0.5,
    ):
        super().__init__()
        self.columns, self.p_global = columns, p_global
        stages = []
        for i, (channels, dropout) in enumerate(blocks):
            block = FractalBlock(in_chans, channels, columns, dropout, p_local)
            stages.append(FractalStage(block, pool=i < len(blocks) - 1))
            in_chans = channels
        self.blocks = nn.ModuleList(stages)
        self.pool = nn.AdaptiveMaxPool2d(1)  # the last block's 2x2 max pool; any input size
        self.fc = nn.Linear(in_chans, num_classes)
        self.num_features, self.num_classes = in_chans, num_classes
        self.stage_names = tuple(f"blocks.{i}" for i in range(len(blocks)))
        self.cam_layer = self.stage_names[-1]

    def global_column(self) -> int:
        """The column kept by global drop-path for this mini-batch, or -1 (all columns, local drop-path)."""
        if self.training and self.p_global > 0 and float(torch.rand(1)) < self.p_global:
            return int(torch.randint(self.columns, (1,)))
        return -1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        column = self.global_column()
        for stage in self.blocks:
            x = stage(x, column)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


register = partial(register_model, "FractalNet", FRACTALNET_PAPER, input_size=(3, 32, 32), num_classes=10)


@register()
def fractalnet(**kwargs) -> FractalNet:
    """FractalNet for CIFAR: 5 blocks of 4 columns (40 layers deep), join by mean, local and global drop-path."""
    return FractalNet(FRACTAL_CIFAR, **kwargs)
