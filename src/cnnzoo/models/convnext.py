"""ConvNeXt: Liu, Mao, Wu, Feichtenhofer, Darrell, Xie (2022), "A ConvNet for the 2020s", arXiv:2201.03545.

A ResNet modernised step by step towards a Swin Transformer (section 2): a 4x4 stride-4 "patchify" stem, stage
compute ratio 1:1:3:1, depthwise 7x7 convolutions, an inverted bottleneck (4x), GELU, a single LayerNorm per block
and no BatchNorm, and separate 2x2 stride-2 downsampling layers with a LayerNorm before each. A block (Figure 4) is
depthwise 7x7 -> LayerNorm -> 1x1 to 4C -> GELU -> 1x1 back to C, scaled per channel by layer scale (initialised to
1e-6) and added to its input through stochastic depth. The variants (section 3, "Model variants") differ only in the
channels C and the number of blocks B of the four stages. Stochastic depth grows linearly from 0 at the first block
to drop_path_rate at the last (the reference code's linspace; torchvision's stochastic_depth_prob); the defaults are
the paper's ImageNet-1K training rates (appendix A.1, Table 5: 0.1/0.4/0.5/0.5 for T/S/B/L).

Layout, LayerNorm eps (1e-6) and initialisation (truncated normal, std 0.02) follow torchvision: its convnext_*
state_dicts load strictly (its bare ``layer_scale`` parameter is renamed to our ``layer_scale.gamma`` on loading) and
give the same outputs; 28,589,128 / 50,223,688 / 88,591,464 / 197,767,336 parameters. The 1x1 convolutions are
nn.Linear layers on a channels-last view, as in the reference code and torchvision.

``small_input=True`` replaces the 4x4/4 patchify stem with a 3x3 stride-1 convolution for 32x32 images (the network
then downsamples 8x, not 32x, and ends at 4x4).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import DropPath, LayerNorm2d, LayerScale
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

CONVNEXT = Paper("A ConvNet for the 2020s", "Liu, Mao, Wu, Feichtenhofer, Darrell, Xie", 2022, "2201.03545")


class Variant(NamedTuple):
    """One model variant of section 3: channels C and blocks B of the four stages."""

    dims: tuple[int, int, int, int]  # C
    depths: tuple[int, int, int, int]  # B
    drop_path_rate: float  # stochastic depth for ImageNet-1K training, appendix A.1


VARIANTS = {
    "tiny": Variant((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
    "small": Variant((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
    "base": Variant((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
    "large": Variant((192, 384, 768, 1536), (3, 3, 27, 3), 0.5),
}

class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Block(nn.Module):
    """ConvNeXt block (Figure 4), laid out as torchvision's CNBlock (block.0 depthwise, block.2 LayerNorm, block.3 and
    block.5 the pointwise layers) so that its weights load."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float = 1e-6):
        super().__init__()
        self.layer_scale = LayerScale(dim, layer_scale)  # before block: torchvision's state_dict lists it first
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute(0, 2, 3, 1),  # N x H x W x C: the LayerNorm and the 1x1 convolutions (Linear) act on channels
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),  # inverted bottleneck, 4x (section 2.4)
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute(0, 3, 1, 2),  # N x C x H x W
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.layer_scale(self.block(x)))

    def rename_state_keys(self, state_dict: dict, prefix: str) -> None:
        # torchvision's CNBlock holds the scale as a bare parameter `layer_scale` (same C x 1 x 1 shape)
        if prefix + "layer_scale" in state_dict:
            state_dict[prefix + "layer_scale.gamma"] = state_dict.pop(prefix + "layer_scale")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.rename_state_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvNeXt(ZooModel):
    """ConvNeXt from one variant's channels and depths: stem, four stages with downsampling layers between them,
    global average pooling, LayerNorm and the classifier."""

    cam_layer = "features"
    classifier_path = "classifier.2"
    channels_last = True  # depthwise 7x7 convolutions, and the blocks work channels-last anyway
    stage_names = tuple(f"features.{i}" for i in range(8))  # stem, stage 1, downsample, stage 2, ..., stage 4

    def __init__(
        self,
        variant: str = "tiny",
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        drop_path_rate: float | None = None,
        layer_scale: float = 1e-6,
        small_input: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise UserError(f"ConvNeXt variants are {', '.join(VARIANTS)}, not {variant!r}")
        dims, depths, default_rate = VARIANTS[variant]
        rate = default_rate if drop_path_rate is None else drop_path_rate
        if not 0.0 <= rate < 1.0:
            raise UserError(f"drop_path_rate must be in [0, 1), not {rate}")
        stem = nn.Conv2d(in_chans, dims[0], 3, 1, 1) if small_input else nn.Conv2d(in_chans, dims[0], 4, 4)
        features: list[nn.Module] = [nn.Sequential(stem, LayerNorm2d(dims[0]))]
        total, index = sum(depths), 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:
                features.append(nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)))
            rates = [rate * (index + j) / (total - 1) for j in range(depth)]  # 0 at the first block, rate at the last
            features.append(nn.Sequential(*[Block(dim, p, layer_scale) for p in rates]))
            index += depth
        self.features = nn.Sequential(*features)
        # torchvision's head (norm, flatten, fc: keys classifier.0 and classifier.2); dropout shares the
        # parameter-free slot 1
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1]),
            nn.Sequential(nn.Flatten(1), nn.Dropout(dropout)),
            nn.Linear(dims[-1], num_classes),
        )
        self.num_classes, self.num_features = num_classes, dims[-1]
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3), keepdim=True))


def _init_weights(m: nn.Module) -> None:
    # the reference code's and torchvision's initialisation; LayerNorms keep unit scale, zero shift
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


register = partial(register_model, "ConvNeXt", CONVNEXT, small_input=True)


@register()
def convnext_tiny(**kwargs) -> ConvNeXt:
    """ConvNeXt-T: C = (96, 192, 384, 768), B = (3, 3, 9, 3); torchvision-compatible."""
    return ConvNeXt("tiny", **kwargs)


@register()
def convnext_small(**kwargs) -> ConvNeXt:
    """ConvNeXt-S: C = (96, 192, 384, 768), B = (3, 3, 27, 3); torchvision-compatible."""
    return ConvNeXt("small", **kwargs)


@register()
def convnext_base(**kwargs) -> ConvNeXt:
    """ConvNeXt-B: C = (128, 256, 512, 1024), B = (3, 3, 27, 3); torchvision-compatible."""
    return ConvNeXt("base", **kwargs)


@register()
def convnext_large(**kwargs) -> ConvNeXt:
    """ConvNeXt-L: C = (192, 384, 768, 1536), B = (3, 3, 27, 3); torchvision-compatible."""
    return ConvNeXt("large", **kwargs)
