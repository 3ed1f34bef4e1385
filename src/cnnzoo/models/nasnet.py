"""NASNet-A: Zoph, Vasudevan, Shlens, Le (2018), "Learning transferable architectures for scalable image recognition",
arXiv:1707.07012.

The architecture search found two cells (Figure 4), which the network repeats: a normal cell that keeps the map size
and a reduction cell that halves it. A cell takes the outputs of the two previous cells, h_i and h_{i-1}; each of its
B=5 blocks applies one operation to each of two hidden states (the cell's inputs or earlier blocks' outputs) and adds
the results; the cell's output concatenates the hidden states the table lists. ``NORMAL_CELL`` and ``REDUCTION_CELL``
below are Figure 4 as data, in the order and left/right orientation of the released TF-slim code
(``nasnet_utils.py``), which gives every operation its name ``comb_iter_{block}_{left|right}``.

The ImageNet network (Figure 2, "N @ P": N normal cells per stack, P filters in the penultimate layer):
a 3x3/2 unpadded convolution, two reduction cells as "stem cells" (at 1/4 and 1/2 of the first stack's filters F =
P/24), then three stacks of N normal cells separated by two reduction cells (filters F, 2F, 4F), ReLU, global average
pooling, dropout 0.5 and a linear classifier. Operations on a cell's inputs are preceded by a ReLU-1x1 conv-BN that
sets their width (h_{i-1} at twice the resolution goes through the "factorized reduction": two 1x1 convolutions on
the map and on the map shifted by one pixel, each subsampled by 2, concatenated). Separable convolutions are applied
twice (ReLU-sep-BN-ReLU-sep-BN), pools are 3x3. Stride-2 operations use TensorFlow's "SAME" padding (extra padding
after an even-sized map). NASNet-A Mobile is 4 @ 1056 at 224x224, NASNet-A Large 6 @ 4032 at 331x331; in Large the
cell after each reduction takes the cell BEFORE the reduction's input as its h_{i-1} (TF-slim's
``skip_reduction_layer_input``, set for the Large config only).

Training extras of the paper and the TF-slim configs:

- an auxiliary classifier on the last cell of the second stack (ReLU, 5x5/3 average pool, 1x1 conv 128-BN-ReLU,
  a convolution over the whole remaining map with 768 filters-BN-ReLU, linear); the released code weights its loss
  by 0.4 (cnnzoo's trainer uses its ``aux_weight``). With ``aux_logits=True`` (the default) the forward returns
  ``(logits, aux)`` in training mode and the logits alone in eval mode, as GoogLeNet and Inception-v3 do. An
  adaptive pool before the 768-filter convolution keeps the head usable at other input sizes (identity at the
  default size, where the map is 4x4 in Mobile and 6x6 in Large), and a map smaller than the 5x5 pool (inputs
  below about 80x80) skips that pool;
- ScheduledDropPath: every operation's output except identities is dropped per sample with a probability that grows
  linearly over training, to ``drop_path_rate`` x (cell position + 1) / cells (the TF-slim "v3" schedule: deeper
  cells drop more). ``model.set_training_progress(p)`` sets the schedule (the trainer calls it with epoch / epochs
  before every epoch); until it is called the full rate applies. TF-slim trains Large with drop_path_rate 0.3 (keep
  probability 0.7) and Mobile without it; both default to 0 here.

Module names, parameter order and arithmetic follow timm's ``nasnetalarge`` (Cadene's port of the TF-slim weights),
so its state_dicts load strictly and give the same outputs; our cells sit in the ModuleDict ``cells``
(``cells.cell_0...`` where timm has ``cell_0...``), and loading renames timm's keys. NASNet-A Mobile gets its modules
from the same rules, hence the names of pretrainedmodels' ``nasnetamobile`` (not tested here: timm does not ship it,
and that port pads its stride-2 operations differently). One arithmetic detail of timm's port
differs from TF-slim and is kept: its stride-2 average pools count the "SAME" padding zeros in the average (TF-slim
excludes them), which changes border values of the reduction cells.

Parameters at 1000 classes without the auxiliary head: Mobile 5,289,978, Large 88,753,150 (timm's; with BatchNorm's
36,738 and 196,668 running statistics, Keras' NASNetMobile 5,326,716 and NASNetLarge 88,949,818); the paper's
Tables 2 and 3 quote 5.3M and 88.9M (with the auxiliary head: 7,701,218 and 93,320,934). Mult-adds: Mobile 563.6 M at
224 (paper: 564M), Large 23.78 G at 331 (paper: 23.8B).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import DropPath, init_weights, pad_same
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import Paper, register_model

__all__ = ["NASNet", "NASNetConfig", "CellSpec", "Cell", "ScheduledDropPath", "NORMAL_CELL", "REDUCTION_CELL",
           "NASNET_A_MOBILE", "NASNET_A_LARGE", "scheduled_drop_prob"]

NASNET = Paper("Learning transferable architectures for scalable image recognition",
               "Zoph, Vasudevan, Shlens, Le", 2018, "1707.07012")
BN_EPS = 1e-3  # TF-slim's


class CellSpec(NamedTuple):
    """A NASNet cell as data. Hidden states: 0 = h_i (the previous cell's output), 1 = h_{i-1} (the one before),
    2.. = the blocks' outputs in order. Each block is ((input, op), (input, op)), its two results added."""

    blocks: list[tuple[tuple[int, str], tuple[int, str]]]
    concat: list[int]  # hidden states concatenated into the cell's output
    reduction: bool  # operations on the cell's inputs (states 0 and 1) have stride 2


# Figure 4 (left), the normal cell: the output concatenates h_{i-1} and the five blocks (6 x filters channels).
NORMAL_CELL = CellSpec(
    blocks=[
        ((0, "sep5x5"), (1, "sep3x3")),
        ((1, "sep5x5"), (1, "sep3x3")),
        ((0, "avg3x3"), (1, "identity")),
        ((1, "avg3x3"), (1, "avg3x3")),
        ((0, "sep3x3"), (0, "identity")),
    ],
    concat=[1, 2, 3, 4, 5, 6],
    reduction=False,
)
# Figure 4 (right), the reduction cell: blocks 4 and 5 read block 1 and 2's outputs; four blocks are concatenated.
REDUCTION_CELL = CellSpec(
    blocks=[
        ((0, "sep5x5"), (1, "sep7x7")),
        ((0, "max3x3"), (1, "sep7x7")),
        ((0, "avg3x3"), (1, "sep5x5")),
        ((3, "identity"), (2, "avg3x3")),
        ((2, "sep3x3"), (0, "max3x3")),
    ],
    concat=[3, 4, 5, 6],
    reduction=True,
)


class NASNetConfig(NamedTuple):
    """One ImageNet NASNet-A, "N @ P" (Figure 2 and the TF-slim configs)."""

    num_normal: int  # N: normal cells per stack
    penultimate: int  # P: filters of the last cell's output, 24 x F
    stem_width: int  # filters of the 3x3/2 stem convolution (32 x TF-slim's stem_multiplier)
    skip_reduction_input: bool  # the cell after a reduction takes the cell before the reduction's input as h_{i-1}
    aux_grid: int  # map side before the aux head's 768-filter convolution at the default input size


NASNET_A_MOBILE = NASNetConfig(num_normal=4, penultimate=1056, stem_width=32, skip_reduction_input=False, aux_grid=4)
NASNET_A_LARGE = NASNetConfig(num_normal=6, penultimate=4032, stem_width=96, skip_reduction_input=True, aux_grid=6)


def scheduled_drop_prob(rate: float, position: int, num_cells: int, progress: float) -> float:
    """ScheduledDropPath's drop probability of an operation in the cell at ``position`` (0-based, stem cells
    included) of ``num_cells``, after the fraction ``progress`` of training: linear in depth and in time."""
    return rate * (position + 1) / num_cells * min(max(progress, 0.0), 1.0)


class ScheduledDropPath(DropPath):
    """DropPath (cnnzoo.layers) whose probability is ``final_p`` x the training progress set by set_progress
    (linear growth over training, Zoph et al.'s ScheduledDropPath). Starts at the full rate (progress 1)."""

    def __init__(self, final_p: float = 0.0):
        super().__init__(final_p)
        self.final_p = final_p

    def set_progress(self, progress: float) -> None:
        self.p = self.final_p * min(max(progress, 0.0), 1.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, final_p={self.final_p}"


class PadSame(nn.Module):
    """TensorFlow's "SAME" padding for a kxk window of stride s, computed from the input's size: the output has
    ceil(size / s) positions and any odd padding goes after the map. ``value``: -inf before a max pool."""

    def __init__(self, kernel_size: int, stride: int, value: float = 0.0):
        super().__init__()
        if kernel_size < stride:
            raise UserError(f"PadSame needs kernel_size >= stride, not {kernel_size} < {stride}")
        self.kernel_size, self.stride, self.value = kernel_size, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_same(x, (self.kernel_size, self.kernel_size), (self.stride, self.stride), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def act_conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """ReLU, 1x1 convolution, BN: how a cell adapts the width of its inputs (timm's ActConvBn names)."""
    layers = OrderedDict(act=nn.ReLU(), conv=nn.Conv2d(in_channels, out_channels, 1, bias=False), bn=_bn(out_channels))
    return nn.Sequential(layers)


class SeparableConv2d(nn.Module):
    """kxk depthwise then 1x1 pointwise convolution, bias-free; "SAME" padding (static at stride 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.pad = PadSame(kernel_size, stride) if stride > 1 else None
        padding = 0 if stride > 1 else kernel_size // 2
        self.depthwise_conv2d = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=False
        )
        self.pointwise_conv2d = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return self.pointwise_conv2d(self.depthwise_conv2d(x))


def separable_op(in_channels: int, out_channels: int, kernel_size: int, stride: int, drop_p: float) -> nn.Sequential:
    """The "sep kxk" operation: ReLU-sep-BN twice, the stride (and the width change) on the first (TF-slim's
    _stacked_separable_conv; timm's BranchSeparables), then drop path."""
    return nn.Sequential(OrderedDict(
        act_1=nn.ReLU(),
        separable_1=SeparableConv2d(in_channels, out_channels, kernel_size, stride),
        bn_sep_1=_bn(out_channels),
        act_2=nn.ReLU(inplace=True),
        separable_2=SeparableConv2d(out_channels, out_channels, kernel_size, 1),
        bn_sep_2=_bn(out_channels),
        drop_path=ScheduledDropPath(drop_p),
    ))  # fmt: skip


def pool_op(kind: str, stride: int, drop_p: float) -> nn.Sequential:
    """The "avg 3x3" / "max 3x3" operations, then drop path. At stride 1 the average excludes the padding; at
    stride 2 the "SAME" padding is explicit (zeros, counted in the average as in timm; -inf for max)."""
    if stride == 1:
        pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False) if kind == "avg" else nn.MaxPool2d(3, 1, 1)
        return nn.Sequential(OrderedDict(pool=pool, drop_path=ScheduledDropPath(drop_p)))
    pad = PadSame(3, stride, 0.0 if kind == "avg" else float("-inf"))
    pool = nn.AvgPool2d(3, stride) if kind == "avg" else nn.MaxPool2d(3, stride)
    return nn.Sequential(OrderedDict(pad=pad, pool=pool, drop_path=ScheduledDropPath(drop_p)))


def make_op(op: str, in_channels: int, out_channels: int, stride: int, drop_p: float) -> nn.Module:
    if op.startswith("sep"):
        return separable_op(in_channels, out_channels, int(op[3]), stride, drop_p)
    if op in ("avg3x3", "max3x3"):
        return pool_op(op[:3], stride, drop_p)
    if op == "identity" and stride == 1:
        return nn.Identity()  # TF-slim drops no path on an identity
    raise UserError(f"unknown NASNet operation {op!r} (stride {stride})")


class Cell(nn.Module):
    """One NASNet cell from a CellSpec: adapt both inputs to ``filters`` channels, run the five blocks, concatenate.

    Args:
        spec: NORMAL_CELL or REDUCTION_CELL.
        in_channels: channels of h_i (the previous cell's output).
        prev_channels: channels of h_{i-1}.
        filters: the cell's width: every operation outputs this many channels.
        prev: how h_{i-1} is adapted: "1x1" (ReLU-1x1 conv-BN), "factorized" (it has twice h_i's resolution) or
            "raw" (the first stem cell, which has no h_{i-1} and uses h_i's raw input in its place).
        drop_p: ScheduledDropPath's final probability for this cell's operations.
    """

    def __init__(self, spec: CellSpec, in_channels: int, prev_channels: int, filters: int, prev: str, drop_p: float):
        super().__init__()
        if len(spec.blocks) != 5:
            raise UserError("NASNet-A cells have B=5 blocks")
        # Registration order follows timm's so that the state_dicts list tensors in the same order.
        if prev == "1x1":
            self.conv_prev_1x1 = act_conv_bn(prev_channels, filters)
        self.conv_1x1 = act_conv_bn(in_channels, filters)
        if prev == "factorized":  # two 1x1 convolutions, on the map and on the map shifted by one pixel
            self.act = nn.ReLU()
            self.path_1 = nn.Sequential(OrderedDict(
                avgpool=nn.AvgPool2d(1, 2), conv=nn.Conv2d(prev_channels, filters // 2, 1, bias=False)
            ))  # fmt: skip
            self.path_2 = nn.Sequential(OrderedDict(
                pad=nn.ZeroPad2d((-1, 1, -1, 1)), avgpool=nn.AvgPool2d(1, 2),
                conv=nn.Conv2d(prev_channels, filters - filters // 2, 1, bias=False),
            ))  # fmt: skip
            self.final_path_bn = _bn(filters)
        for name in ("conv_prev_1x1", "act", "path_1", "path_2", "final_path_bn"):
            if not hasattr(self, name):
                setattr(self, name, None)
        state_channels = [filters, prev_channels if prev == "raw" else filters]
        for b, pair in enumerate(spec.blocks):
            for side, (state, op) in zip(("left", "right"), pair):
                stride = 2 if spec.reduction and state < 2 else 1
                module = make_op(op, state_channels[state] if state < 2 else filters, filters, stride, drop_p)
                setattr(self, f"comb_iter_{b}_{side}", module)
        self.inputs = [state for pair in spec.blocks for state, _ in pair]
        self.concat = list(spec.concat)
        self.out_channels = filters * len(spec.concat)

    def _adapt_prev(self, x_prev: torch.Tensor) -> torch.Tensor:
        if self.conv_prev_1x1 is not None:
            return self.conv_prev_1x1(x_prev)
        if self.act is not None and self.path_1 is not None and self.path_2 is not None:
            if self.final_path_bn is not None:  # the factorized reduction
                x_prev = self.act(x_prev)
                return self.final_path_bn(torch.cat([self.path_1(x_prev), self.path_2(x_prev)], 1))
        return x_prev

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        s = [self.conv_1x1(x), self._adapt_prev(x_prev)]  # h_i, h_{i-1}
        i = self.inputs
        s.append(self.comb_iter_0_left(s[i[0]]) + self.comb_iter_0_right(s[i[1]]))
        s.append(self.comb_iter_1_left(s[i[2]]) + self.comb_iter_1_right(s[i[3]]))
        s.append(self.comb_iter_2_left(s[i[4]]) + self.comb_iter_2_right(s[i[5]]))
        s.append(self.comb_iter_3_left(s[i[6]]) + self.comb_iter_3_right(s[i[7]]))
        s.append(self.comb_iter_4_left(s[i[8]]) + self.comb_iter_4_right(s[i[9]]))
        return torch.cat([s[k] for k in self.concat], 1)


class AuxHead(nn.Module):
    """The auxiliary classifier (TF-slim's _build_aux_head): ReLU, 5x5/3 average pool, 1x1 conv 128-BN-ReLU, a
    grid x grid convolution with 768 filters over the remaining map-BN-ReLU, linear. The adaptive pool in front of
    that convolution is the identity at the default input size and adapts other sizes to its kernel; a map smaller
    than the 5x5 pool (inputs below about 80x80) skips the pool."""

    def __init__(self, in_channels: int, num_classes: int, grid: int):
        super().__init__()
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(5, 3)
        self.proj = nn.Conv2d(in_channels, 128, 1, bias=False)
        self.bn0 = _bn(128)
        self.act0 = nn.ReLU(inplace=True)
        self.resize = nn.AdaptiveAvgPool2d(grid)
        self.conv = nn.Conv2d(128, 768, grid, bias=False)
        self.bn1 = _bn(768)
        self.act1 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        if min(x.shape[-2], x.shape[-1]) >= 5:  # smaller maps (small inputs) go straight to the adaptive pool
            x = self.pool(x)
        x = self.act0(self.bn0(self.proj(x)))
        x = self.act1(self.bn1(self.conv(self.resize(x))))  # N x 768 x 1 x 1
        return self.fc(torch.flatten(x, 1))


def _cell_plan(cfg: NASNetConfig) -> list[tuple[str, CellSpec, int, int]]:
    """(name, spec, filters, h_{i-1} offset) for every cell in forward order. The offset counts back through the
    list of earlier outputs [stem conv, stem conv, cell outputs...]: h_i is the last (1), h_{i-1} normally the one
    before it (2), or the one before that (3) for the cell after a reduction with skip_reduction_input."""
    f = cfg.penultimate // 24
    plan = [("cell_stem_0", REDUCTION_CELL, f // 4, 2), ("cell_stem_1", REDUCTION_CELL, f // 2, 2)]
    for stack in range(3):
        if stack > 0:
            plan.append((f"reduction_cell_{stack - 1}", REDUCTION_CELL, f * 2**stack, 2))
        for i in range(cfg.num_normal):
            after_reduction = stack > 0 and i == 0 and cfg.skip_reduction_input
            plan.append((f"cell_{stack * cfg.num_normal + i}", NORMAL_CELL, f * 2**stack, 3 if after_reduction else 2))
    return plan


class NASNet(ZooModel):
    """An ImageNet NASNet-A built from its config: stem convolution, two stem cells, three stacks of normal cells
    with reduction cells between them, ReLU, pool, dropout, linear.

    Args:
        cfg: NASNET_A_MOBILE or NASNET_A_LARGE.
        num_classes: classifier outputs.
        in_chans: input channels.
        dropout: before the classifier (TF-slim's dense_dropout_keep_prob 0.5).
        aux_logits: build the auxiliary classifier (returned in training mode only).
        drop_path_rate: ScheduledDropPath's final probability at the last cell.
    """

    classifier_path = "last_linear"
    cam_layer = "act"
    channels_last = True  # depthwise convolutions
    aux_classifiers = {"aux_head": "aux_head.fc"}
    __constants__ = ["aux_logits", "aux_index", "prev_offsets"]

    def __init__(
        self,
        cfg: NASNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
        aux_logits: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise UserError(f"drop_path_rate must be in [0, 1), not {drop_path_rate}")
        self.conv0 = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_chans, cfg.stem_width, 3, 2, 0, bias=False), bn=_bn(cfg.stem_width)
        ))  # fmt: skip
        plan = _cell_plan(cfg)
        # (channels, resolution level) of the earlier outputs; the stem convolution stands in for h_{i-1} at first
        outputs, cells = [(cfg.stem_width, 0), (cfg.stem_width, 0)], OrderedDict()
        for position, (name, spec, filters, offset) in enumerate(plan):
            (x_ch, x_level), (prev_ch, prev_level) = outputs[-1], outputs[-offset]
            prev = "raw" if position == 0 else "factorized" if prev_level < x_level else "1x1"
            drop_p = scheduled_drop_prob(drop_path_rate, position, len(plan), 1.0)
            cells[name] = Cell(spec, x_ch, prev_ch, filters, prev, drop_p)
            outputs.append((cells[name].out_channels, x_level + spec.reduction))
        self.cells = nn.ModuleDict(cells)
        self.prev_offsets = [offset for _, _, _, offset in plan]
        # the auxiliary head reads the last cell before the second reduction
        self.aux_index = [name for name, *_ in plan].index("reduction_cell_1") - 1
        self.aux_logits = aux_logits
        aux_channels = outputs[self.aux_index + 2][0]
        self.aux_head = AuxHead(aux_channels, num_classes, cfg.aux_grid) if aux_logits else nn.Identity()
        self.act = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.last_linear = nn.Linear(cfg.penultimate, num_classes)
        self.num_classes, self.num_features = num_classes, cfg.penultimate
        self.stage_names = ("conv0",) + tuple(f"cells.{name}" for name in cells)
        self.apply(partial(init_weights, conv_mode="fan_in", linear_std=None))

    def _trunk(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.conv0(x)
        outs = [x, x]  # the last three outputs: h_{i-1} is at most three back
        aux: list[torch.Tensor] = []
        for i, cell in enumerate(self.cells.values()):
            x = cell(outs[-1], outs[-self.prev_offsets[i]])
            outs = [outs[-2], outs[-1], x]
            if with_aux and i == self.aux_index:
                aux.append(self.aux_head(x))
        return self.act(x), aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, False)[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_linear(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training mode with the aux head returns (logits, aux); TorchScript compiles only the logits path.
        if not torch.jit.is_scripting():
            if self.training and self.aux_logits:
                return self._forward_with_aux(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def _forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, (aux,) = self._trunk(x, True)
        return self.forward_head(x), aux

    @torch.jit.unused
    def set_training_progress(self, progress: float) -> None:
        """ScheduledDropPath: set every operation's drop probability to its final value x progress (the fraction
        of training done, clipped to [0, 1]); call once per step or epoch."""
        for m in self.modules():
            if isinstance(m, ScheduledDropPath):
                m.set_progress(progress)

    def rename_state_keys(self, state_dict: dict, prefix: str) -> None:
        # timm's (Cadene's, TF-slim's) names put the cells at the top level: cell_stem_0.*, cell_0.*, ...
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].split(".")[0] in self.cells]:
            state_dict[f"{prefix}cells.{key[len(prefix):]}"] = state_dict.pop(key)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.rename_state_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


register = partial(register_model, "NASNet", NASNET)


@register()
def nasnet_a_mobile(**kwargs) -> NASNet:
    """NASNet-A Mobile (4 @ 1056), 224x224, with the auxiliary classifier."""
    return NASNet(NASNET_A_MOBILE, **kwargs)


@register(input_size=(3, 331, 331))
def nasnet_a_large(**kwargs) -> NASNet:
    """NASNet-A Large (6 @ 4032), 331x331, with the auxiliary classifier (timm's nasnetalarge layout)."""
    return NASNet(NASNET_A_LARGE, **kwargs)
