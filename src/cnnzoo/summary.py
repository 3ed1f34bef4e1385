"""Layer-by-layer analysis: output shape, parameters, MACs, cumulative receptive field and jump.

The receptive field follows the textbook recurrence, applied from the input forwards:

    jump(i)  = jump(i-1) * stride(i)
    RF(i)    = RF(i-1) + (kernel(i) - 1) * dilation(i) * jump(i-1)

which is the same as F(i) = (F(i+1) - 1) * S + K read backwards. It is tracked on the tensors themselves
(height and width separately, for 1x7 / 7x1 convolutions), so it is right through branches: a merge (add, cat,
multiply) takes the largest receptive field over its inputs. Operations that mix all positions (flatten, global
pooling) extend the field over the whole map they see.

MACs are the multiply-accumulates of convolutions, linear layers and matrix products (torchvision's convention),
counted per call through a TorchFunctionMode, so functional calls that module hooks miss are counted too. FLOPs,
as torch.utils.flop_counter counts them, are 2 x MACs. Running on the meta device costs no arithmetic at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnzoo.errors import UserError

__all__ = ["LayerRow", "Summary", "summarize", "InputSizeError", "format_count"]

_TAG = "_cnnzoo_rf"  # attribute on traced tensors: (rf_h, rf_w, jump_h, jump_w)
_CONVS = {"conv1d", "conv2d", "conv3d"}
_POOLS = {"max_pool1d", "max_pool2d", "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d", "lp_pool2d"}
_MATMULS = {"matmul", "mm", "bmm", "addmm", "baddbmm"}


class InputSizeError(UserError):
    """The input is too small for the network (a layer would shrink it below 1x1)."""


@dataclass
class LayerRow:
    name: str
    layer_type: str
    out_shape: tuple[int, ...]  # without the batch dimension
    params: int  # trainable parameters owned by this layer (counted at its first call only)
    macs: int
    rf: tuple[int, int]  # receptive field (height, width) in input pixels
    jump: tuple[int, int]  # distance in input pixels between neighbouring outputs

    @property
    def rf_str(self) -> str:
        return _pair_str(self.rf)

    @property
    def jump_str(self) -> str:
        return _pair_str(self.jump)


@dataclass
class Summary:
    model_name: str
    input_size: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def row(self, name: str) -> LayerRow:
        """The first row of the named layer."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def table(self) -> str:
        header = ("layer", "type", "output", "params", "MACs", "RF", "jump")
        body = [
            (r.name, r.layer_type, "x".join(map(str, r.out_shape)), f"{r.params:,}", f"{r.macs:,}", r.rf_str, r.jump_str)
            for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
        numeric = {3, 4, 5, 6}

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(fmt(header))
        size = "x".join(map(str, self.input_size))
        footer = [
            f"{self.model_name} at {size}: {self.total_params:,} params ({self.trainable_params:,} trainable), "
            f"{format_count(self.total_macs)}MACs = {format_count(self.total_flops)}FLOPs (FLOPs = 2 x MACs)"
        ]
        return "\n".join([fmt(header), rule, *map(fmt, body), rule, *footer])

    __str__ = table

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "layers": [asdict(r) for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["layer", "type", "output", "params", "macs", "rf_h", "rf_w", "jump_h", "jump_w"])
        for r in self.rows:
            shape = "x".join(map(str, r.out_shape))
            writer.writerow([r.name, r.layer_type, shape, r.params, r.macs, *r.rf, *r.jump])
        return out.getvalue()


def format_count(n: int) -> str:
    """2,350,000,000 -> '2.35 G'; small counts keep their digits."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 100 * scale else f"{n / scale:.1f} {unit}"
    return f"{n} "


def _pair_str(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _pair(value, n: int = 2) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value) if len(value) == n else tuple(value) * n
    return (value,) * n


def _arg(args: tuple, kwargs: dict, index: int, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _spatial(t: torch.Tensor) -> tuple[int, int] | None:
    return (t.shape[-2], t.shape[-1]) if t.dim() >= 3 else None  # N x C vectors have no positions


def _window(name: str, args: tuple, kwargs: dict, out: torch.Tensor):
    """(kernel, stride, dilation) per axis for sliding-window ops, else None."""
    x = args[0]
    if name in _CONVS:
        weight = args[1]
        n = weight.dim() - 2
        kernel = tuple(weight.shape[2:])
        stride, dilation = _pair(_arg(args, kwargs, 3, "stride", 1), n), _pair(_arg(args, kwargs, 5, "dilation", 1), n)
    elif name in _POOLS:
        n = 1 if name.endswith("1d") else 2
        kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1), n)
        stride = _arg(args, kwargs, 2, "stride", None)
        stride = kernel if stride in (None, [], ()) else _pair(stride, n)
        dilation = _pair(_arg(args, kwargs, 4, "dilation", 1), n) if name.startswith("max") else (1,) * n
    elif name.startswith("adaptive_") and x.dim() >= 3:
        # Adaptive pooling with an input divisible by its output is a plain pool; otherwise this is the
        # smallest window that covers every output's bin.
        size_in, size_out = x.shape[2:], out.shape[2:]
        stride = tuple(max(1, i // o) for i, o in zip(size_in, size_out))
        kernel = tuple(i - (o - 1) * s for i, o, s in zip(size_in, size_out, stride))
        dilation = (1,) * len(kernel)
    else:
        return None
    if len(kernel) == 1:  # 1-d ops act along the width
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    return kernel[-2:], stride[-2:], dilation[-2:]


def _macs(name: str, args: tuple, kwargs: dict, out) -> int:
    if name in _CONVS:
        weight = args[1]  # C_out x C_in/groups x k...: each output element costs C_in/groups * prod(k) MACs
        return out.numel() * math.prod(weight.shape[1:])
    if name == "linear":
        return out.numel() * args[1].shape[-1]
    if name in _MATMULS:
        a = args[1] if name in ("addmm", "baddbmm") else args[0]
        return out.numel() * a.shape[-1]
    return 0


class _Tracer(TorchFunctionMode):
    """Propagates receptive-field tags through every torch function and counts MACs."""

    def __init__(self, state: "_State"):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        tagged = [t for t in _tensors((args, kwargs)) if hasattr(t, _TAG)]
        if not tagged:
            return out
        outs = list(_tensors(out))
        macs = _macs(name, args, kwargs, outs[0]) if outs else 0
        window = _window(name, args, kwargs, outs[0]) if outs else None
        for t in outs:
            setattr(t, _TAG, self._propagate(tagged, t, window))
        self.state.record_function(name, macs, window is not None, outs[0] if outs else None)
        return out

    @staticmethod
    def _propagate(inputs: list[torch.Tensor], out: torch.Tensor, window) -> tuple[int, int, int, int]:
        rf_h, rf_w, j_h, j_w = (max(getattr(t, _TAG)[i] for t in inputs) for i in range(4))
        if window is not None:
            (k_h, k_w), (s_h, s_w), (d_h, d_w) = window
            return rf_h + (k_h - 1) * d_h * j_h, rf_w + (k_w - 1) * d_w * j_w, j_h * s_h, j_w * s_w
        maps = [_spatial(t) for t in inputs if t.dim() >= 3]
        if not maps:  # vector in, vector out (the classifier)
            return rf_h, rf_w, j_h, j_w
        h, w = max(maps, key=math.prod)
        spatial_out = _spatial(out)
        if spatial_out is None or (spatial_out == (1, 1) and (h, w) != (1, 1)):
            # flatten, global pooling: every output sees the whole map
            return rf_h + (h - 1) * j_h, rf_w + (w - 1) * j_w, j_h * h, j_w * w
        return rf_h, rf_w, j_h, j_w


class _State:
    def __init__(self, model: nn.Module):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.root = model
        self.stack: list[nn.Module] = []
        self.rows: list[LayerRow] = []
        self.seen: set[int] = set()
        self.macs_in_leaf = 0
        self.total_macs = 0
        self.last_module = ""

    def enter(self, module: nn.Module) -> None:
        self.stack.append(module)
        self.last_module = self.names.get(id(module), "")
        if self.is_leaf(module):
            self.macs_in_leaf = 0

    def leave(self, module: nn.Module, output) -> None:
        self.stack.pop()
        if not self.is_leaf(module):
            return
        first = id(module) not in self.seen
        self.seen.add(id(module))
        params = sum(p.numel() for p in module.parameters() if p.requires_grad) if first else 0
        t = next(_tensors(output), None)
        self.rows.append(_row(self.names[id(module)], type(module).__name__, t, params, self.macs_in_leaf))

    def record_function(self, name: str, macs: int, windowed: bool, out) -> None:
        self.total_macs += macs
        if self.stack and self.is_leaf(self.stack[-1]):
            self.macs_in_leaf += macs
        elif (macs or windowed) and out is not None:  # a functional conv/linear/pool outside any leaf module
            owner = self.names.get(id(self.stack[-1]), "") if self.stack else ""
            self.rows.append(_row(f"{owner}.{name}" if owner else name, f"F.{name}", out, 0, macs))

    def is_leaf(self, module: nn.Module) -> bool:
        # A childless module is a row; the root is one only if it is a plain torch.nn layer (summarize(conv)).
        childless = next(module.children(), None) is None
        return childless and (module is not self.root or type(module).__module__.startswith("torch.nn"))



def _row(name: str, layer_type: str, t: torch.Tensor | None, params: int, macs: int) -> LayerRow:
    shape = tuple(t.shape[1:]) if t is not None else ()
    rf_h, rf_w, j_h, j_w = getattr(t, _TAG, (0, 0, 0, 0))
    return LayerRow(name, layer_type, shape, params, macs, (rf_h, rf_w), (j_h, j_w))


def summarize(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224), model_name: str | None = None) -> Summary:
    """Trace one forward pass of a single image (in eval mode, without gradients) and tabulate every leaf layer.

    The model may live on the meta device, in which case no arithmetic is done at all.

    Raises:
        InputSizeError: the input is too small for the network.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    state = _State(model)
    hooks = []
    for module in model.modules():
        hooks.append(module.register_forward_pre_hook(lambda m, _: state.enter(m)))
        hooks.append(module.register_forward_hook(lambda m, _, out: state.leave(m, out)))
    x = torch.zeros(1, *input_size, device=device)
    setattr(x, _TAG, (1, 1, 1, 1))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Tracer(state):
            model(x)
    except RuntimeError as err:
        if not _is_size_error(err):
            raise
        size = "x".join(map(str, input_size))
        where = f" at {state.last_module}" if state.last_module else ""
        raise InputSizeError(f"input {size} is too small for {model_name or type(model).__name__}{where}") from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    params = list(model.parameters())
    return Summary(
        model_name or type(model).__name__,
        tuple(input_size),
        state.rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_macs=state.total_macs,
    )


def _is_size_error(err: RuntimeError) -> bool:
    text = str(err)
    return any(s in text for s in ("too small", "Kernel size can't be greater", "output size", "non-positive", "than input"))
