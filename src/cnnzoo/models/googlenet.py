"""GoogLeNet / Inception v1: Szegedy et al. (2014), "Going deeper with convolutions", arXiv:1409.4842.

Nine inception modules in three stages (3a-3b at 28x28, 4a-4e at 14x14, 5a-5b at 7x7) after a convolutional
stem; each module concatenates a 1x1 branch, a 1x1 reduction -> 3x3, a 1x1 reduction -> 5x5 and a 3x3 max pool
-> 1x1 projection (the widths are the paper's Table 1). Global average pooling, dropout and one linear layer
replace the fully connected head. Two auxiliary classifiers (5x5/3 average pool, 1x1 conv 128, FC 1024, 70%
dropout, FC) sit on 4a and 4d during training; the trainer adds 0.3 x their losses (section 5).

Two registered networks:

- ``inception_v1`` is the paper's network: biased convolutions with ReLU and no batch normalisation, 5x5
  convolutions in the third branch, local response normalisation after the first max pool and after the
  3x3 stem convolution (Figure 3), a 3x3/2 max pool before stage 5 and 40% dropout before the classifier.
- ``googlenet`` is torchvision's ``googlenet`` so that its state_dicts load strictly. It departs from the paper:
  every convolution is bias-free and followed by BatchNorm (eps 1e-3); the "5x5" branch uses a 3x3 kernel
  (torchvision's acknowledged bug, pytorch/vision#906, kept because the published weights depend on it);
  no local response normalisation; a 2x2/2 max pool before stage 5; 20% dropout. ``transform_input=True``
  re-normalises ImageNet-normalised input to [-1, 1], as torchvision does for its ported weights.

The auxiliary heads: torchvision's pool adaptively to 4x4 (4x4 windows on the 14x14 map); inception_v1's use
the paper's 5x5/3 average pool, which also gives 4x4 there, followed by an adaptive 4x4 pool that is the
identity at 224x224 and keeps the heads usable at other input sizes. In training mode with
``aux_logits=True`` the forward returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, torchvision's
order (the deeper head first), so training code written for torchvision's GoogLeNet unpacks it unchanged; in eval
mode (and when scripted) only the logits.

``small_input=True`` replaces the 7x7/2 stem convolution by a 3x3/1 one and drops the two stem max pools, so
that a 32x32 image reaches stage 3 at 32x32 and the final map is 8x8.

Parameters at 1000 classes: googlenet 13,004,888 (6,624,904 with ``aux_logits=False``),
inception_v1 13,378,280 (6,998,552 with ``aux_logits=False``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import ConvBNAct, LocalResponseNorm, init_weights
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["GoogLeNet", "Inception", "InceptionAux", "BasicConv2d", "InceptionRow", "GOOGLENET_STAGES",
           "transform_input", "init_kaiming"]

GOOGLENET = Paper("Going deeper with convolutions", "Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, "
                  "Vanhoucke, Rabinovich", 2014, "1409.4842")
register = partial(register_model, "Inception", GOOGLENET, small_input=True)


class InceptionRow(NamedTuple):
    """One row of the paper's Table 1 (output channels of each branch)."""

    ch1x1: int  # #1x1
    ch3x3red: int  # #3x3 reduce
    ch3x3: int  # #3x3
    ch5x5red: int  # #5x5 reduce
    ch5x5: int  # #5x5
    pool_proj: int  # pool proj

    @property
    def out_channels(self) -> int:
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


# GoogLeNet, Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; one list per stage (3: 28x28,
# 4: 14x14, 5: 7x7). Module names are inception{stage}{a,b,...}, as in torchvision.
GOOGLENET_STAGES: dict[int, list[InceptionRow]] = {
    3: [
        InceptionRow(64, 96, 128, 16, 32, 32),  # 3a: 256
        InceptionRow(128, 128, 192, 32, 96, 64),  # 3b: 480
    ],
    4: [
        InceptionRow(192, 96, 208, 16, 48, 64),  # 4a: 512
        InceptionRow(160, 112, 224, 24, 64, 64),  # 4b: 512
        InceptionRow(128, 128, 256, 24, 64, 64),  # 4c: 512
        InceptionRow(112, 144, 288, 32, 64, 64),  # 4d: 528
        InceptionRow(256, 160, 320, 32, 128, 128),  # 4e: 832
    ],
    5: [
        InceptionRow(256, 160, 320, 32, 128, 128),  # 5a: 832
        InceptionRow(384, 192, 384, 48, 128, 128),  # 5b: 1024
    ],
}


class BasicConv2d(nn.Module):
    """Bias-free convolution -> BatchNorm (eps 1e-3) -> ReLU, with torchvision's child names conv/bn so that
    torchvision's (and timm's) Inception state_dicts load. The ReLU is a module for guided backprop."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def transform_input(x: torch.Tensor) -> torch.Tensor:
    """Map ImageNet mean/std-normalised RGB to (x - 0.5) / 0.5, the scaling Google's ported weights expect."""
    x0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat([x0, x1, x2], 1)


# The paper's convolution: biased, ReLU, no normalisation (children 0: conv, 1: relu).
ConvReLU = partial(ConvBNAct, norm=False)


class Inception(nn.Module):
    """The inception module of Figure 2(b): four branches concatenated along channels."""

    def __init__(self, in_channels: int, row: InceptionRow, conv_block=BasicConv2d, kernel_5x5: int = 5):
        super().__init__()
        self.branch1 = conv_block(in_channels, row.ch1x1, 1)
        self.branch2 = nn.Sequential(
            conv_block(in_channels, row.ch3x3red, 1), conv_block(row.ch3x3red, row.ch3x3, 3, padding=1)
        )
        self.branch3 = nn.Sequential(
            conv_block(in_channels, row.ch5x5red, 1),
            conv_block(row.ch5x5red, row.ch5x5, kernel_5x5, padding=kernel_5x5 // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), conv_block(in_channels, row.pool_proj, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (section 5): average pool to 4x4, 1x1 conv 128, FC 1024, ReLU, dropout, FC."""

    def __init__(
        self, in_channels: int, num_classes: int, conv_block=BasicConv2d, dropout: float = 0.7, paper: bool = False
    ):
        super().__init__()
        # torchvision: an adaptive 4x4 pool; the paper: 5x5/3 (4x4 on 14x14), then adaptive for other sizes
        self.pool = nn.Sequential(nn.AvgPool2d(5, 3), nn.AdaptiveAvgPool2d(4)) if paper else nn.AdaptiveAvgPool2d(4)
        self.conv = conv_block(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)  # N x 2048
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNetOutputs(NamedTuple):
    """The training-mode outputs, in torchvision's order and under its names."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor  # the head on inception (4d)
    aux_logits1: torch.Tensor  # the head on inception (4a)


class GoogLeNet(ZooModel):
    """GoogLeNet: torchvision's variant by default, the paper's network with ``paper_exact=True``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        dropout: dropout before the final classifier (torchvision 0.2, the paper 0.4).
        aux_logits: build the two auxiliary classifiers (returned in training mode only).
        dropout_aux: dropout inside the auxiliary classifiers (the paper's 70%).
        transform_input: map ImageNet-normalised input to the [-1, 1] scaling of the ported weights.
        small_input: 3x3/1 stem convolution and no stem max pools, for 32x32 images.
        paper_exact: the paper's network (biased convs without BN, 5x5 branch, LRN, 3x3/2 pool before stage 5).
    """

    classifier_path = "fc"
    stage_names = ("conv1", "conv2", "conv3") + tuple(
        f"inception{stage}{'abcde'[i]}" for stage, rows in GOOGLENET_STAGES.items() for i in range(len(rows))
    )
    cam_layer = "inception5b"
    aux_classifiers = {"aux1": "aux1.fc2", "aux2": "aux2.fc2"}
    __constants__ = ["aux_logits", "transform_input"]

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
        aux_logits: bool = True,
        dropout_aux: float = 0.7,
        transform_input: bool = False,
        small_input: bool = False,
        paper_exact: bool = False,
    ):
        super().__init__()
        if transform_input and in_chans != 3:
            raise UserError("transform_input=True needs in_chans=3 (it re-normalises RGB input)")
        conv = ConvReLU if paper_exact else BasicConv2d
        self.aux_logits, self.transform_input = aux_logits, transform_input
        # Stem (Table 1 / Figure 3): 7x7/2 conv, 3x3/2 max pool, [LRN], 1x1 conv, 3x3 conv, [LRN], 3x3/2 max pool
        stem_pool = nn.Identity if small_input else partial(nn.MaxPool2d, 3, stride=2, ceil_mode=True)
        self.conv1 = conv(in_chans, 64, 3, padding=1) if small_input else conv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = stem_pool()
        self.norm1 = LocalResponseNorm(5, 1e-4, 0.75, k=1.0) if paper_exact else nn.Identity()  # BVLC prototxt
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.norm2 = LocalResponseNorm(5, 1e-4, 0.75, k=1.0) if paper_exact else nn.Identity()
        self.maxpool2 = stem_pool()
        channels = 192
        for stage, rows in GOOGLENET_STAGES.items():
            if stage == 4:
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            if stage == 5:  # torchvision: 2x2/2 (same 7x7 output from 14x14); the paper: 3x3/2
                self.maxpool4 = nn.MaxPool2d(3 if paper_exact else 2, stride=2, ceil_mode=True)
            for i, row in enumerate(rows):
                block = Inception(channels, row, conv, kernel_5x5=5 if paper_exact else 3)
                setattr(self, f"inception{stage}{'abcde'[i]}", block)
                channels = row.out_channels
        # Without aux heads they are Identity (no parameters, no state_dict keys) so forward stays scriptable.
        aux = partial(InceptionAux, num_classes=num_classes, conv_block=conv, dropout=dropout_aux, paper=paper_exact)
        self.aux1 = aux(512) if aux_logits else nn.Identity()
        self.aux2 = aux(528) if aux_logits else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.num_classes, self.num_features = num_classes, channels
        self.apply(_init_caffe_xavier if paper_exact else init_kaiming)

    def _trunk(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        aux: list[torch.Tensor] = []
        if self.transform_input:
            x = transform_input(x)
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.maxpool2(self.norm2(self.conv3(self.conv2(self.norm1(x)))))  # N x 192 x 28 x 28
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # N x 480 x 14 x 14
        x = self.inception4a(x)
        if with_aux:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        if with_aux:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        return x, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, False)[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training mode with aux heads returns (logits, aux2, aux1); TorchScript compiles only the logits path.
        if not torch.jit.is_scripting():
            if self.training and self.aux_logits:
                return self._forward_with_aux(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def _forward_with_aux(self, x: torch.Tensor) -> GoogLeNetOutputs:
        x, (aux1, aux2) = self._trunk(x, True)
        return GoogLeNetOutputs(self.forward_head(x), aux2, aux1)


# He-normal with fan_in, not torchvision's truncated normal (std 0.01 for GoogLeNet, 0.1 for Inception-v3): with
# BatchNorm's initial running statistics that makes an untrained network's eval-mode outputs vanish (~1e-19) or
# explode (~1e12), which breaks export checks and explanations of freshly built models. Loaded weights replace it.
init_kaiming = partial(init_weights, conv_mode="fan_in")


def _init_caffe_xavier(m: nn.Module) -> None:
    # BVLC GoogLeNet prototxt: "xavier" filler (uniform, variance 1/fan_in), conv bias 0.2, classifier bias 0.
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_uniform_(m.weight, a=1.0)
        nn.init.constant_(m.bias, 0.2 if isinstance(m, nn.Conv2d) else 0.0)


@register()
def googlenet(**kwargs) -> GoogLeNet:
    """GoogLeNet as in torchvision (batch norm, 3x3 in the "5x5" branch), two auxiliary classifiers."""
    return GoogLeNet(**kwargs)


@register()
def inception_v1(**kwargs) -> GoogLeNet:
    """GoogLeNet exactly as in the paper's Table 1: 5x5 branches, LRN, no batch norm, 40% dropout."""
    return GoogLeNet(paper_exact=True, **{"dropout": 0.4, **kwargs})
