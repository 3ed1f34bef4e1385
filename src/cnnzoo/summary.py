"""Layer-by-layer analysis: output shape, kernel/stride/padding/groups, parameters, MACs, receptive field and jump.

Receptive field. The field of an output position is the box of input pixels that can change it. It is tracked on
the tensors themselves, per axis (height and width apart, for 1x7 / 7x1 convolutions), as three numbers: its size
(RF), the jump (the distance in input pixels between neighbouring outputs) and its start (the input coordinate
where the field of output 0 begins, negative inside the zero padding). Output i sees input pixels
[start + i*jump, start + i*jump + RF - 1], clipped to the image. A sliding window (convolution, pooling) with
kernel k, stride s, padding p and dilation d applies the textbook recurrence, from the input forwards:

    RF'    = RF + (k - 1) * d * jump
    start' = start - p * jump
    jump'  = jump * s

which is F(i) = (F(i+1) - 1) * S + K read backwards. A merge of maps of one size (add, cat, multiply) takes the
box around its inputs' fields (for branches padded symmetrically, the largest field); explicit padding and slicing
shift the start. An operation that mixes all positions along an axis (flatten, global pooling) extends the field
over the whole map along it.

Through a global gate. Squeeze-and-excitation (SE-ResNet, SENet, MobileNetV3, EfficientNet) multiplies a map by a
per-channel scale computed from its global average: `x * scale`, scale 1x1 and broadcast over x. Strictly every
output then depends on every input pixel, but only through one number per channel, and the papers mean by the
receptive field that of the spatial path. So a 1x1 map broadcast onto a larger one is a gate: the result keeps the
field and jump of its spatial inputs and is marked `gated` (as is everything computed from it), which the table
shows as a `*` after the RF. A test checks every registered network against the support of one output's input
gradient in a linearised copy of it, the gate's branch held constant.

Rows. One per leaf module (a module without children), in call order; a module called twice has two rows and its
parameters are counted at the first. Placeholders are left out: parameter-free leaves that hand their input back
untouched, running no operation (nn.Identity, an unused downsample, stochastic depth in eval mode). Functional
calls that leaf modules do not cover get a row of type ``F.op``: windows (F.conv2d, F.max_pool2d), operations
with MACs and operations that read a parameter directly, named ``owner.op`` after the module they run in; and the
merge that makes a module's output when no row shows it, named after that module (an Inception block's
concatenation, ``Mixed_7c`` of type ``F.cat``; an SE block's multiply; at the top, NiN's final ``mean``). So
every module's output is its last row, and `collapse(depth)` folds rows into blocks and stages.

Auxiliary classifiers run only in training: when the inference pass leaves parameters unused, a second pass in
training mode (batch 2, buffers and RNG restored) lists the modules it adds, marked `aux`; their MACs are not in
the total, which is the inference cost. Every parameter appears in exactly one row.

MACs are the multiply-accumulates of convolutions, linear layers and matrix products (torchvision's convention),
counted per call through a TorchFunctionMode, so functional calls that module hooks miss are counted too. FLOPs,
as torch.utils.flop_counter counts them, are 2 x MACs. Running on the meta device costs no arithmetic at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnzoo.units import format_count
from cnnzoo.errors import InputSizeError

__all__ = ["LayerRow", "Summary", "summarize", "InputSizeError", "format_count", "tensors_in"]

_TAG = "_cnnzoo_field"  # attribute on traced tensors: their _Field
_LISTED = "_cnnzoo_listed"  # attribute on traced tensors: a row shows this value
_CONVS = {"conv1d", "conv2d"}
# Positions of (kernel_size, stride, padding, dilation) in each pooling function's signature; None: no such argument.
_POOLS = {
    "max_pool1d": (1, 2, 3, 4),
    "max_pool2d": (1, 2, 3, 4),
    "max_pool2d_with_indices": (1, 2, 3, 4),
    "avg_pool1d": (1, 2, 3, None),
    "avg_pool2d": (1, 2, 3, None),
    "lp_pool1d": (2, 3, None, None),
    "lp_pool2d": (2, 3, None, None),
}
_POOL_KEYWORDS = ("kernel_size", "stride", "padding", "dilation")
_MATMULS = {"matmul", "mm", "bmm", "addmm", "baddbmm"}
# Row names for torch's operator spellings: `a + b` reaches the tracer as __add__, `a += b` as __iadd__.
_OP_NAMES = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "add_": "add",
    "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul", "mul_": "mul",
    "__getitem__": "getitem", "max_pool2d_with_indices": "max_pool2d",
}  # fmt: skip




@dataclass
class LayerRow:
    """One row of the summary. Pairs are (height, width); window fields are None for rows without a window."""

    name: str
    layer_type: str
    out_shape: tuple[int, ...]  # without the batch dimension; () for parameters no traced pass reached
    params: int  # parameters first used here (shared ones are counted once)
    macs: int  # per image
    rf: tuple[int, int]  # receptive field in input pixels (the spatial path's, through a gate)
    jump: tuple[int, int]  # distance in input pixels between neighbouring outputs
    rf_start: tuple[int, int] = (0, 0)  # input coordinate where output (0, 0)'s field begins (< 0: in the padding)
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None  # before the first position
    dilation: tuple[int, int] | None = None
    groups: int | None = None  # convolutions only: in_channels for a depthwise one
    gated: bool = False  # a global gate (squeeze-and-excitation) lies on the way from the input
    aux: bool = False  # runs in training only (auxiliary classifier), or no traced pass reached it

    @property
    def rf_str(self) -> str:
        return _pair_str(self.rf) + ("*" if self.gated else "")

    @property
    def jump_str(self) -> str:
        return _pair_str(self.jump)


_HEADER = ("layer", "type", "output", "kernel", "stride", "pad", "groups", "params", "MACs", "RF", "jump", "")
_NUMERIC = {3, 4, 5, 6, 7, 8, 9, 10}  # right-aligned columns
_CSV_HEADER = ["layer", "type", "output", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
               "dilation_h", "dilation_w", "groups", "params", "macs", "rf_h", "rf_w", "jump_h", "jump_w",
               "rf_start_h", "rf_start_w", "gated", "aux"]  # fmt: skip


@dataclass
class Summary:
    """What `summarize` found. `rows` in call order; totals are the inference pass's (auxiliary heads excluded)."""

    model_name: str
    input_size: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0
    module_types: dict[str, str] = field(default_factory=dict, repr=False)  # dotted name -> class, for collapse

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def aux_macs(self) -> int:
        """MACs of the auxiliary heads (training only), not in total_macs."""
        return sum(r.macs for r in self.rows if r.aux)

    def row(self, name: str) -> LayerRow:
        """The first row of the named layer."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def collapse(self, depth: int) -> Summary:
        """Fold the rows into modules `depth` levels below the model (1: stages or top-level layers, 2: blocks).

        A folded row sums the parameters and MACs of its rows and shows the module's output (its last row):
        shape, RF and jump, as in the papers' architecture tables. Parameters and MACs still sum to the totals.
        """
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        groups: list[tuple[str, list[LayerRow]]] = []
        for row in self.rows:
            key = ".".join(row.name.split(".")[:depth])
            if groups and groups[-1][0] == key and groups[-1][1][-1].aux == row.aux:
                groups[-1][1].append(row)
            else:
                groups.append((key, [row]))
        rows = [members[0] if len(members) == 1 else self._fold(key, members) for key, members in groups]
        return replace(self, rows=rows)

    def _fold(self, name: str, members: list[LayerRow]) -> LayerRow:
        last = members[-1]
        params, macs = sum(r.params for r in members), sum(r.macs for r in members)
        layer_type = self.module_types.get(name, last.layer_type)
        return LayerRow(name, layer_type, last.out_shape, params, macs, last.rf, last.jump, last.rf_start,
                        gated=last.gated, aux=last.aux)

    def table(self) -> str:
        body = [_cells(r) for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(_HEADER)]

        def fmt(cells: tuple[str, ...]) -> str:
            aligned = (c.rjust(w) if i in _NUMERIC else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            return "  ".join(aligned).rstrip()

        lines = [fmt(_HEADER), *map(fmt, body)]
        rule = "-" * max(map(len, lines))
        size = "x".join(map(str, self.input_size))
        footer = [
            f"{self.model_name} at {size}: {self.total_params:,} params ({self.trainable_params:,} trainable), "
            f"{format_count(self.total_macs)}MACs = {format_count(self.total_flops)}FLOPs (FLOPs = 2 x MACs)"
        ]
        if any(r.gated for r in self.rows):
            footer.append("RF*: past a global gate (squeeze-and-excitation); the field of the spatial path")
        if any(r.aux for r in self.rows):
            footer.append(f"aux: training-only auxiliary heads, {format_count(self.aux_macs)}MACs, not in the total")
        return "\n".join([lines[0], rule, *lines[1:], rule, *footer])

    __str__ = table

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "aux_macs": self.aux_macs,
            "layers": [asdict(r) for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_CSV_HEADER)
        for r in self.rows:
            window = [v for pair in (r.kernel, r.stride, r.padding, r.dilation) for v in (pair or ("", ""))]
            writer.writerow([r.name, r.layer_type, "x".join(map(str, r.out_shape)), *window,
                             "" if r.groups is None else r.groups, r.params, r.macs, *r.rf, *r.jump,
                             *r.rf_start, int(r.gated), int(r.aux)])  # fmt: skip
        return out.getvalue()


def _cells(r: LayerRow) -> tuple[str, ...]:
    kernel = "" if r.kernel is None else _pair_str(r.kernel)
    if r.dilation is not None and r.dilation != (1, 1):
        kernel += f" d{_pair_str(r.dilation)}"
    window = ["" if v is None else _pair_str(v) for v in (r.stride, r.padding)]
    groups = "" if r.groups is None else str(r.groups)
    traced = bool(r.out_shape)
    return (r.name, r.layer_type, "x".join(map(str, r.out_shape)), kernel, *window, groups, f"{r.params:,}",
            f"{r.macs:,}", r.rf_str if traced else "", r.jump_str if traced else "", "aux" if r.aux else "")


def _pair_str(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


# ----------------------------------------------------------------------------------------------------- fields


class _Field(NamedTuple):
    """What the tracer knows about a tensor's positions; pairs are (height, width)."""

    rf: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    gated: bool = False
    const: bool = False  # a 1x1 map broadcast to every position (expand): a gate wherever it is merged
    op: str = "input"  # the torch function that made it, for naming a row that shows it


class _Window(NamedTuple):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int | None


_INPUT = _Field((1, 1), (1, 1), (0, 0))


def _pair(value, n: int = 2) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value) if len(value) == n else tuple(value) * n
    return (value,) * n


def _arg(args: tuple, kwargs: dict, index: int | None, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[index] if index is not None and len(args) > index else default


def tensors_in(obj) -> Iterator[torch.Tensor]:
    """The tensors in a nest of lists, tuples and dicts (a call's arguments or outputs), depth first."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors_in(item)


def _spatial(t: torch.Tensor) -> tuple[int, int] | None:
    return (t.shape[-2], t.shape[-1]) if t.dim() >= 3 else None  # N x C vectors have no positions


def _conv_window(args: tuple, kwargs: dict) -> tuple:
    weight = args[1]
    n = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    stride, dilation = _pair(_arg(args, kwargs, 3, "stride", 1), n), _pair(_arg(args, kwargs, 5, "dilation", 1), n)
    padding = _arg(args, kwargs, 4, "padding", 0)
    if isinstance(padding, str):  # "valid", or "same" (stride 1), where PyTorch puts an odd pixel after
        padding = tuple(0 if padding == "valid" else d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return kernel, stride, _pair(padding, n), dilation, _arg(args, kwargs, 6, "groups", 1)


def _pool_window(name: str, args: tuple, kwargs: dict) -> tuple:
    n = 1 if name.endswith("1d") else 2
    positions = dict(zip(_POOL_KEYWORDS, _POOLS[name]))
    kernel = _pair(_arg(args, kwargs, positions["kernel_size"], "kernel_size", 1), n)
    stride = _arg(args, kwargs, positions["stride"], "stride", None)
    stride = kernel if stride in (None, [], ()) else _pair(stride, n)
    padding = _pair(_arg(args, kwargs, positions["padding"], "padding", 0), n)
    dilation = _pair(_arg(args, kwargs, positions["dilation"], "dilation", 1), n)
    return kernel, stride, padding, dilation, None


def _adaptive_window(x: torch.Tensor, out: torch.Tensor) -> tuple:
    # An input divisible by the output is a plain pool; otherwise this is the smallest window covering every bin.
    size_in, size_out = x.shape[2:], out.shape[2:]
    stride = tuple(max(1, i // o) for i, o in zip(size_in, size_out))
    kernel = tuple(i - (o - 1) * s for i, o, s in zip(size_in, size_out, stride))
    return kernel, stride, (0,) * len(kernel), (1,) * len(kernel), None


def _window(name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> _Window | None:
    """Kernel, stride, padding, dilation (per axis) and groups of a sliding-window op, else None."""
    if name in _CONVS:
        parts = _conv_window(args, kwargs)
    elif name in _POOLS:
        parts = _pool_window(name, args, kwargs)
    elif name.startswith("adaptive_") and args[0].dim() >= 3:
        parts = _adaptive_window(args[0], out)
    else:
        return None
    if len(parts[0]) == 1:  # 1-d ops act along the width
        parts = tuple((1, *p) for p in parts[:4]) + parts[4:]
    return _Window(*(tuple(p[-2:]) for p in parts[:4]), parts[4])


def _union(fields: list[_Field]) -> _Field:
    """The box around several fields (a merge), with the coarsest jump."""
    lo = tuple(min(f.start[a] for f in fields) for a in (0, 1))
    hi = tuple(max(f.start[a] + f.rf[a] - 1 for f in fields) for a in (0, 1))
    jump = tuple(max(f.jump[a] for f in fields) for a in (0, 1))
    return _Field(tuple(h - l + 1 for l, h in zip(lo, hi)), jump, lo, any(f.gated for f in fields))


def _through_window(f: _Field, w: _Window) -> _Field:
    rf = tuple(r + (k - 1) * d * j for r, k, d, j in zip(f.rf, w.kernel, w.dilation, f.jump))
    start = tuple(s - p * j for s, p, j in zip(f.start, w.padding, f.jump))
    return f._replace(rf=rf, start=start, jump=tuple(j * s for j, s in zip(f.jump, w.stride)))


def _shift(f: _Field, name: str, args: tuple, x: torch.Tensor) -> _Field:
    """Explicit padding (F.pad) and slicing (x[..., a::s, b::t]) move the start; slicing with a step scales the jump."""
    start, jump = list(f.start), list(f.jump)
    if name == "pad":
        pads = list(args[1])  # (left, right, top, bottom, ...): the last axis first
        for axis, before in ((1, 0), (0, 2)):
            if len(pads) > before:
                start[axis] -= pads[before] * jump[axis]
    else:
        key = args[1] if isinstance(args[1], tuple) else (args[1],)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (x.dim() - len(key) + 1) + key[i + 1 :]
        if not all(isinstance(k, slice) for k in key) or len(key) > x.dim():
            return f  # integer, tensor or None indices: not a crop of the map
        key = key + (slice(None),) * (x.dim() - len(key))
        for axis, item in enumerate(key[x.dim() - 2 : x.dim()]):
            if isinstance(item, slice):
                first, _, step = item.indices(x.shape[x.dim() - 2 + axis])
                start[axis] += first * jump[axis]
                jump[axis] *= step
    return f._replace(start=tuple(start), jump=tuple(jump))


def _mix(f: _Field, size: tuple[int, int], out_size: tuple[int, int] | None) -> _Field:
    """Along an axis that an op reduces to one position (global pooling, flatten), every output sees the whole map."""
    rf, jump = list(f.rf), list(f.jump)
    for a in (0, 1):
        if out_size is None or (out_size[a] == 1 and size[a] > 1):
            rf[a] += (size[a] - 1) * jump[a]
            jump[a] *= size[a]
    return f._replace(rf=tuple(rf), jump=tuple(jump))


def _propagate(name: str, args: tuple, inputs: list[torch.Tensor], out: torch.Tensor, window: _Window | None) -> _Field:
    if window is not None:
        return _through_window(_union([getattr(t, _TAG) for t in inputs]), window)
    maps = [t for t in inputs if t.dim() >= 3]
    if not maps:  # vector in, vector out (the classifier)
        return _union([getattr(t, _TAG) for t in inputs])
    out_size = _spatial(out)
    spread = out_size is not None and out_size != (1, 1)
    gates = [t for t in maps if getattr(t, _TAG).const or (spread and _spatial(t) == (1, 1))]
    spatial = [t for t in maps if not any(t is g for g in gates)]
    if not spatial:  # a 1x1 map broadcast on its own (expand): it stays a gate
        return _union([getattr(t, _TAG) for t in gates])._replace(const=spread)
    f = _union([getattr(t, _TAG) for t in spatial])
    if gates:
        f = f._replace(gated=True)
    if name in ("pad", "__getitem__"):
        return _shift(f, name, args, maps[0])
    return _mix(f, max((_spatial(t) for t in spatial), key=math.prod), out_size)


def _macs(name: str, args: tuple, out: torch.Tensor) -> int:
    if name in _CONVS:
        weight = args[1]  # C_out x C_in/groups x k...: each output element costs C_in/groups * prod(k) MACs
        return out.numel() * math.prod(weight.shape[1:])
    if name == "linear":
        return out.numel() * args[1].shape[-1]
    if name in _MATMULS:
        a = args[1] if name in ("addmm", "baddbmm") else args[0]
        return out.numel() * a.shape[-1]
    return 0


# ----------------------------------------------------------------------------------------------------- tracing


class _Tracer(TorchFunctionMode):
    """Propagates fields through every torch function and counts MACs."""

    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        tagged = [t for t in tensors_in((args, kwargs)) if hasattr(t, _TAG)]
        outs = list(tensors_in(out))
        if not tagged or not outs:
            return out
        window = _window(name, args, kwargs, outs[0])
        if name == "pad":
            self.state.record_pad(args[1])
        op = _OP_NAMES.get(name, name.strip("_"))
        new = _propagate(name, args, tagged, outs[0], window)._replace(op=op)
        for t in outs:
            old = getattr(t, _TAG, None)
            if old is not None and old[:5] == new[:5]:
                continue  # the same tensor handed back (x.contiguous(), an in-place ReLU): its row still shows it
            setattr(t, _TAG, new)
            setattr(t, _LISTED, False)
        params = [p for p in tensors_in((args, kwargs)) if isinstance(p, nn.Parameter)]
        macs = _macs(name, args, outs[0]) // self.state.batch
        self.state.record_function(op, macs, window, params, outs[0])
        return out


class _State:
    """Rows of one traced pass. `counted` (parameter ids) and `called` (module ids) outlive it."""

    def __init__(self, model: nn.Module, batch: int, counted: set[int], called: set[int], aux: bool):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.root, self.batch, self.counted, self.aux = model, batch, counted, aux
        self.called_before = set(called)  # modules the inference pass ran (for the training pass: not auxiliary)
        self.called = called
        self.stack: list[nn.Module] = []
        self.rows: list[LayerRow] = []
        self.total_macs = 0
        self.leaf_ops = 0  # traced torch functions run by the current leaf
        self.leaf_macs = 0
        self.leaf_window: _Window | None = None
        self.leaf_pad = (0, 0)  # explicit padding before the current leaf's window (TensorFlow's SAME), per axis
        self.last: torch.Tensor | None = None  # the tensor the last row shows
        self.last_module = ""

    def scope(self) -> str:
        return self.names.get(id(self.stack[-1]), "") if self.stack else ""

    def is_leaf(self, module: nn.Module) -> bool:
        # A childless module is a row; the root is one only if it is a plain torch.nn layer (summarize(conv)).
        childless = next(module.children(), None) is None
        return childless and (module is not self.root or type(module).__module__.startswith("torch.nn"))

    def enter(self, module: nn.Module) -> None:
        self.stack.append(module)
        self.called.add(id(module))
        self.last_module = self.names.get(id(module), "")
        if self.is_leaf(module):
            self.leaf_ops, self.leaf_macs, self.leaf_window, self.leaf_pad = 0, 0, None, (0, 0)

    def leave(self, module: nn.Module, inputs: tuple, output) -> None:
        self.stack.pop()
        t = next(tensors_in(output), None)
        name = self.names.get(id(module), "")
        if self.is_leaf(module):
            params = self.take(module.parameters())
            # A placeholder (nn.Identity, stochastic depth in eval mode) hands its input back untouched.
            if params or self.leaf_ops or not any(t is i for i in inputs):
                self.add(name, type(module).__name__, t, params, self.leaf_macs, self.leaf_window, module)
        elif t is not None and not (t is self.last and getattr(t, _LISTED, False)):
            op = getattr(t, _TAG, _INPUT).op  # the merge that made the module's output, which no row shows yet
            self.add(name or op, f"F.{op}", t, 0, 0, None, module)

    def record_pad(self, pads) -> None:
        """F.pad inside a leaf (layers.Conv2dSame): its row's pad column shows the padding before, as a
        convolution's own padding would."""
        if self.stack and self.is_leaf(self.stack[-1]):
            pads = list(pads)  # (left, right, top, bottom, ...): the last axis first
            self.leaf_pad = (pads[2] if len(pads) > 2 else 0, pads[0] if pads else 0)

    def record_function(self, op: str, macs: int, window: _Window | None, params: list, out: torch.Tensor) -> None:
        self.total_macs += macs
        if self.stack and self.is_leaf(self.stack[-1]):
            if window is not None and self.leaf_pad != (0, 0):
                window = window._replace(padding=tuple(p + q for p, q in zip(window.padding, self.leaf_pad)))
            self.leaf_ops += 1
            self.leaf_macs += macs
            self.leaf_window = window or self.leaf_window
            return
        new_params = self.take(params)
        if macs or window or new_params:  # a functional conv/linear/pool, or a parameter read outside any leaf
            owner = self.scope()
            module = self.stack[-1] if self.stack else self.root
            self.add(f"{owner}.{op}" if owner else op, f"F.{op}", out, new_params, macs, window, module)

    def take(self, params: Iterable[nn.Parameter]) -> int:
        """Parameters not counted in an earlier row."""
        fresh = {id(p): p.numel() for p in params if id(p) not in self.counted}
        self.counted.update(fresh)
        return sum(fresh.values())

    def add(self, name: str, layer_type: str, t, params: int, macs: int, window, module: nn.Module) -> None:
        aux = self.aux and (id(module) not in self.called_before or params > 0)
        self.rows.append(_row(name, layer_type, t, params, macs, window, aux))
        if t is not None:
            setattr(t, _LISTED, True)
        self.last = t


def _row(name: str, layer_type: str, t, params: int, macs: int, window: _Window | None, aux: bool) -> LayerRow:
    shape = tuple(t.shape[1:]) if t is not None else ()
    f = getattr(t, _TAG, None)
    fields = (f.rf, f.jump, f.start) if f is not None and shape else ((0, 0), (0, 0), (0, 0))
    gated = bool(f is not None and f.gated)
    return LayerRow(name, layer_type, shape, params, macs, *fields, *(window or (None,) * 5), gated, aux)


def _trace(model: nn.Module, input_size: tuple[int, ...], state: _State) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    hooks = []
    for module in model.modules():
        hooks.append(module.register_forward_pre_hook(lambda m, _: state.enter(m)))
        hooks.append(module.register_forward_hook(lambda m, inputs, out: state.leave(m, inputs, out)))
    x = torch.zeros(state.batch, *input_size, device=device)
    setattr(x, _TAG, _INPUT)
    try:
        with torch.no_grad(), _Tracer(state):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def _training_mode(model: nn.Module):
    """Training mode with nothing to show for it afterwards: buffers (BN statistics) and RNG states restored."""
    buffers = [(b, b.clone()) for b in model.buffers()]
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        model.train()
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _auxiliary_rows(model: nn.Module, input_size: tuple[int, ...], counted: set[int], called: set[int]) -> list:
    """Rows of what only a training pass runs (auxiliary heads), in call order; [] if that pass fails."""
    state = _State(model, 2, set(counted), called, aux=True)  # batch 2: batch norm needs two values per channel
    try:
        with _training_mode(model):
            _trace(model, input_size, state)
    except (RuntimeError, ValueError):
        return []
    counted.update(state.counted)
    return state.rows


def _merge_aux(rows: list[LayerRow], training_rows: list[LayerRow]) -> list[LayerRow]:
    """Insert the training pass's auxiliary rows after the inference row they follow there."""
    known = {r.name for r in rows}
    after: dict[str | None, list[LayerRow]] = {}
    anchor = None
    for r in training_rows:
        if r.aux:
            after.setdefault(anchor, []).append(r)
        elif r.name in known:
            anchor = r.name
    merged = list(after.pop(None, []))
    for r in rows:
        merged.append(r)
        merged.extend(after.pop(r.name, []))
    return merged + [r for group in after.values() for r in group]


def _untraced_rows(model: nn.Module, counted: set[int]) -> list[LayerRow]:
    """Modules whose parameters no traced pass used, one row each, so that the rows still sum to the total."""
    rows = []
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        if params:
            counted.update(id(p) for p in params)
            rows.append(_row(name, type(module).__name__, None, sum(p.numel() for p in params), 0, None, True))
    return rows


def summarize(
    model: nn.Module,
    input_size: tuple[int, ...] = (3, 224, 224),
    model_name: str | None = None,
    depth: int | None = None,
) -> Summary:
    """Trace one forward pass of a single image (in eval mode, without gradients) and tabulate it, layer by layer.

    The model may live on the meta device, in which case no arithmetic is done at all. Auxiliary heads, which run
    in training only, are traced in a second pass and listed, marked `aux` (see the module docstring).

    Args:
        model: any nn.Module taking one N x C x H x W tensor.
        input_size: (C, H, W) of the image.
        model_name: the name the table and errors use (default: the class name).
        depth: fold the rows into modules this many levels deep (see Summary.collapse); None lists every layer.

    Raises:
        InputSizeError: the input is too small for the network.
    """
    name = model_name or type(model).__name__
    counted: set[int] = set()
    called: set[int] = set()
    state = _State(model, 1, counted, called, aux=False)
    was_training = model.training
    model.eval()
    try:
        _trace(model, input_size, state)
    except RuntimeError as err:
        # A network traces at its own size; at another, any shape error is that size's fault (a head sized for
        # one input, like LeNet-5's C5 -> F6), so it is the user's one-line mistake, not a traceback.
        size = "x".join(map(str, input_size))
        where = f" at {state.last_module}" if state.last_module else ""
        if _is_size_error(err):
            raise InputSizeError(f"input {size} is too small for {name}{where}") from None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputSizeError(f"{name} cannot take a {size} input{where}: {reason}") from None
    finally:
        model.train(was_training)
    params = list(model.parameters())
    rows = state.rows
    if any(id(p) not in counted for p in params):
        try:
            rows = _merge_aux(rows, _auxiliary_rows(model, input_size, counted, called))
        finally:
            model.train(was_training)
        rows += _untraced_rows(model, counted)
    summary = Summary(
        name,
        tuple(input_size),
        rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_macs=state.total_macs,
        module_types={n: type(m).__name__ for n, m in model.named_modules()},
    )
    return summary if depth is None else summary.collapse(depth)


_SIZE_ERRORS = ("too small", "Kernel size can't be greater", "output size", "non-positive", "than input")


def _is_size_error(err: RuntimeError) -> bool:
    return any(s in str(err) for s in _SIZE_ERRORS)
