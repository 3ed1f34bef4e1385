"""Blocks shared by two or more families. A block used by one family stays in that family's module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ConvBNAct",
    "Conv2dSame",
    "same_padding",
    "pad_same",
    "pad_like_tensorflow",
    "LocalResponseNorm",
    "SqueezeExcite",
    "DropPath",
    "init_weights",
    "make_divisible",
    "channel_shuffle",
    "ChannelShuffle",
    "set_batchnorm",
    "InvertedResidual",
    "MBConv",
    "FusedMBConv",
    "LayerNorm2d",
    "LayerScale",
]

# Activations by name, so configuration tables can say "relu6" or "hswish" as the papers do.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,  # swish, EfficientNet
    "hswish": nn.Hardswish,  # MobileNetV3
    "hsigmoid": nn.Hardsigmoid,
}


def init_weights(module: nn.Module, conv_mode: str = "fan_out", linear_std: float | None = 0.01) -> None:
    """The classic CNN initialisation, for ``model.apply(partial(init_weights, ...))``: He-normal convolutions
    (He et al. 2015; "fan_out" as torchvision, "fan_in" keeps the forward signal's scale), zero biases, unit
    batch norm, N(0, linear_std) linear layers (None keeps PyTorch's default for them)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode=conv_mode, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear) and linear_std is not None:
        nn.init.normal_(module.weight, 0.0, linear_std)
        nn.init.zeros_(module.bias)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of divisor, never more than 10% below value
    (the rule of the MobileNet/EfficientNet reference code)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, laid out as torchvision's Conv2dNormActivation (children 0, 1, 2)
    so that its state_dict keys match. ``act=None`` leaves the activation out (linear bottlenecks)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        dilation: int = 1,
        act: str | None = "relu",
        norm: bool = True,
        bias: bool | None = None,
    ):
        if padding is None:  # "same" padding for odd kernels
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = ((k[0] - 1) // 2 * dilation, (k[1] - 1) // 2 * dilation)
        bias = not norm if bias is None else bias
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act is not None:
            layers.append(ACTIVATIONS[act](inplace=True) if act not in ("sigmoid", "tanh") else ACTIVATIONS[act]())
        super().__init__(*layers)
        self.out_channels = out_channels


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> int:
    """TensorFlow's "SAME" padding, in total, along one axis of ``size`` pixels: enough for ceil(size / stride)
    outputs, never negative."""
    out = (size + stride - 1) // stride
    return max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


def pad_same(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int] = (1, 1), value: float = 0.0) -> torch.Tensor:
    """``x`` padded for a window that then runs unpadded, as TensorFlow's "SAME" pads it: the odd pixel after
    (bottom/right). ``value``: -inf before a max pool."""
    pad_h = same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    pad_w = same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)


class Conv2dSame(nn.Conv2d):
    """A convolution padded like TensorFlow's "SAME": the padding depends on the input size, and an odd pixel goes
    after (bottom/right), where PyTorch's symmetric padding puts it on both sides. The models Google trained in
    TensorFlow (EfficientNet's release, ported by timm as ``tf_efficientnet_*``) need it for their outputs. Its
    parameters and state_dict are nn.Conv2d's (``padding`` stays 0), so weights load as for any convolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def pad_like_tensorflow(module: nn.Module) -> None:
    """Make every convolution in module pad like TensorFlow's "SAME". Where that is always symmetric (stride 1 and
    an even (k-1)*d: k//2 on each side for odd kernels) the plain convolution stays, with the same padding; every
    other one becomes a Conv2dSame sharing its parameters. Call it before loading weights or initialising."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            axes = zip(child.kernel_size, child.stride, child.dilation)
            symmetric = all(s == 1 and (k - 1) * d % 2 == 0 for k, s, d in axes)
            if symmetric:
                child.padding = tuple((k - 1) * d // 2 for k, d in zip(child.kernel_size, child.dilation))
            else:
                same = Conv2dSame(
                    child.in_channels, child.out_channels, child.kernel_size, child.stride, child.dilation,
                    child.groups, child.bias is not None,
                )
                same.weight, same.bias = child.weight, child.bias
                setattr(module, name, same)
        else:
            pad_like_tensorflow(child)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Local response normalisation across channels (Krizhevsky et al. 2012, section 3.3).

    b = a / (k + alpha/n * sum of a^2 over n neighbouring channels)^beta. Note: PyTorch and Caffe divide alpha by n;
    the AlexNet paper's formula does not, so the paper's alpha=1e-4 corresponds to alpha=5e-4 here with n=5.
    We keep the Caffe convention, in which the published AlexNet/GoogLeNet/VGG models were trained.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__(size, alpha, beta, k)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool, a 1x1 bottleneck, a gate, channel-wise scale.

    1x1 convolutions in place of fully connected layers (equivalent on a 1x1 map), named fc1/fc2 as in
    torchvision's SqueezeExcitation and timm's SE-ResNet so that their weights load."""

    def __init__(self, channels: int, squeeze_channels: int, act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = ACTIVATIONS[act](inplace=True) if act != "sigmoid" else nn.Sigmoid()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = ACTIVATIONS[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # N x C x 1 x 1
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))
        return x * scale


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop the whole residual branch of a sample with
    probability p and scale survivors by 1/(1-p); identity in eval mode. torchvision's StochasticDepth("row")."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if keep == 0.0:  # every branch dropped: zeros (the rescaling 1/keep would turn 0 x inf into NaN)
            return x * 0.0
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of `groups` groups."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2)  # N x C/g x g x H x W
    return x.reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def set_batchnorm(module: nn.Module, eps: float, momentum: float) -> None:
    """Give every BatchNorm2d in module the given eps and momentum: MobileNetV3 and the TF-ported EfficientNets
    use TensorFlow's BN settings (eps=1e-3, momentum 0.01 in PyTorch's convention), which change eval outputs."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = eps, momentum


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (Sandler et al. 2018, "MobileNetV2", arXiv:1801.04381, Table 1),
    also the MBConv of MobileNetV3 and EfficientNet: 1x1 expansion, kxk depthwise, optional squeeze-excitation,
    1x1 linear projection (no activation), identity shortcut when stride is 1 and the channels are unchanged.

    The expansion is left out when expanded_channels == in_channels (expand ratio 1). The layers sit in
    ``self.block`` as in torchvision's MobileNetV3/EfficientNet, so their weights load; drop_path is the
    stochastic depth probability of the residual branch (EfficientNet)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expanded_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: str = "relu6",
        se_channels: int = 0,
        se_act: str = "relu",
        se_gate: str = "sigmoid",
        drop_path: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvBNAct(in_channels, expanded_channels, 1, act=act))
        dw = ConvBNAct(expanded_channels, expanded_channels, kernel_size, stride, groups=expanded_channels, act=act)
        layers.append(dw)
        if se_channels:
            layers.append(SqueezeExcite(expanded_channels, se_channels, act=se_act, gate=se_gate))
        layers.append(ConvBNAct(expanded_channels, out_channels, 1, act=None))  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.drop_path(out) + x
        return out

    def rename_state_keys(self, state_dict: dict, prefix: str) -> None:
        # torchvision's MobileNetV2 names this Sequential `conv` and flattens the projection's conv and BN into it
        # (conv.{p}, conv.{p+1}); rename those keys to our layout (block.{p}.0, block.{p}.1) so its weights load.
        proj = len(self.block) - 1
        for key in [k for k in state_dict if k.startswith(prefix + "conv.")]:
            index, _, rest = key[len(prefix) + len("conv.") :].partition(".")
            i = int(index)
            new = f"block.{i}.{rest}" if i < proj else f"block.{proj}.{i - proj}.{rest}"
            state_dict[prefix + new] = state_dict.pop(key)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.rename_state_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


MBConv = InvertedResidual  # EfficientNet's name for the same block (Tan & Le 2019, section 4)


class FusedMBConv(nn.Module):
    """Fused-MBConv (Tan & Le 2021, "EfficientNetV2: Smaller Models and Faster Training", arXiv:2104.00298, Figure 2):
    MBConv's 1x1 expansion and kxk depthwise convolution fused into one regular kxk convolution, then optional
    squeeze-excitation and the 1x1 linear projection; identity shortcut when stride is 1 and the channels are unchanged.
    Early stages run faster this way on accelerators, where depthwise convolutions use the hardware poorly (sec. 3.2).

    With expand ratio 1 (expanded_channels == in_channels) the block is the kxk convolution alone, which keeps its
    activation (the reference code's "add act if no expansion"). No row of the paper's tables gives a Fused-MBConv SE;
    se_channels, when given, puts it after the kxk convolution. The layers sit in ``self.block`` as in torchvision's
    EfficientNetV2, so its weights load; drop_path is the stochastic depth probability of the residual branch."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expanded_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: str = "silu",
        se_channels: int = 0,
        se_act: str = "silu",
        se_gate: str = "sigmoid",
        drop_path: float = 0.0,
    ):
        super().__init__()
        expand = expanded_channels != in_channels
        width = expanded_channels if expand else out_channels
        layers: list[nn.Module] = [ConvBNAct(in_channels, width, kernel_size, stride, act=act)]
        if se_channels:
            layers.append(SqueezeExcite(width, se_channels, act=se_act, gate=se_gate))
        if expand:
            layers.append(ConvBNAct(expanded_channels, out_channels, 1, act=None))  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.drop_path(out) + x
        return out


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an N x C x H x W map, each position normalised on its own: the
    "channels_first" LayerNorm of ConvNeXt (Liu et al. 2022, arXiv:2201.03545). Parameters ``weight`` and ``bias``
    of shape C, as torchvision's LayerNorm2d."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # N x H x W x C: layer_norm normalises the last dimension
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """A learnable per-channel scale on a residual branch, initialised small so that every block starts close to the
    identity (Touvron et al. 2021, "Going deeper with Image Transformers", arXiv:2103.17239; ConvNeXt uses 1e-6).
    For N x C x H x W maps: ``gamma`` has shape C x 1 x 1, the layout of torchvision's ConvNeXt ``layer_scale``."""

    def __init__(self, channels: int, init_value: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"channels={self.gamma.shape[0]}"
