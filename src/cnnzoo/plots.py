"""Figures: a training run's curves, several runs' curves overlaid, and the accuracy-versus-compute chart of the zoo.

matplotlib's object API on the Agg canvas (no pyplot, so no global state and no display): each ``*_figure``
function returns a Figure, ``save_png`` writes it. The trainer draws ``training_figure`` into a run's curves.png;
`cnnzoo plot` and `cnnzoo compare RUN ...` overlay runs with ``runs_figure``. A loss axis is logarithmic when the
losses span more than a decade (one validation spike would flatten every other epoch into a line).

Labels of the chart are placed greedily, most crowded last: each tries rings of positions around its bubble
(right, left, above, below, then the diagonals, farther out each ring) and takes the first one that overlaps no
label placed before, no other bubble and not the axes' edge, or, when every candidate collides, the one with the
least overlap. Labels set away from their bubble get a thin leader line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.ticker import FuncFormatter

__all__ = ["ChartPoint", "training_figure", "plot_training", "runs_figure", "accuracy_figure", "save_png", "plot_runs",
           "label_boxes"]

LOG_LOSS_RATIO = 10.0  # a loss axis whose largest/smallest value exceed this (a decade) is drawn on a log scale
MAX_BUBBLE = 1600.0  # area in points^2 of the largest network's bubble; the others scale with their parameters
LABEL_SIZE = 7  # points
# Candidate directions for a label, in degrees: the four sides first (shortest leader), then the diagonals.
_DIRECTIONS = (0, 180, 90, 270, 30, 150, 210, 330, 60, 120, 240, 300, 15, 165, 195, 345, 45, 135, 225, 315)
_RINGS = 14  # distances tried: the bubble's edge, then one label height farther per ring
LABEL_WEIGHT = 4.0  # a label over a label costs this many times a label over a bubble (which stays readable)


@dataclass(frozen=True)
class ChartPoint:
    """One bubble of the accuracy chart."""

    label: str
    macs: int  # per image
    top1: float  # percent
    params: int
    family: str


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=dpi)
    return path


# ------------------------------------------------------------------------------------------- run curves
def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _loss_scale(ax, losses: Sequence[float]) -> None:
    positive = [v for v in losses if v > 0]
    if positive and max(positive) / min(positive) > LOG_LOSS_RATIO:
        ax.set_yscale("log")
        # Plain numbers on the decades and at 2, 3 and 5 between them (0.2, 0.3, 0.5, 1), not 2 x 10^-1.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))


# One run's curves: (metrics.jsonl key, label, colour, style); an EMA of the weights is drawn where the run has one.
_SERIES = [("train", "train", "tab:blue", "--"), ("val", "validation", "tab:orange", "-"),
           ("ema_val", "validation (EMA weights)", "tab:green", "-")]


def training_figure(epochs: Sequence[Mapping], title: str = "",
                    lr: tuple[Sequence[float], Sequence[float]] | None = None) -> Figure:
    """One run: loss and top-1 per epoch (train dashed, validation solid, the EMA's validation where there is
    one, the best validation epoch marked) and, with ``lr`` ((epochs, learning rates) at steps), a panel of the
    learning-rate schedule.

    Args:
        epochs: metrics.jsonl rows (epoch, train_loss, val_loss, train_top1, val_top1, optionally ema_val_*).
        title: the run in words (model, data, optimiser); may hold a line break.
        lr: the learning rate along the run, x in epochs.
    """
    fig = Figure(figsize=(13 if lr else 10, 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if lr else 2, gridspec_kw={"width_ratios": [1, 1, 0.8] if lr else [1, 1]})
    loss_ax, top1_ax = axes[0], axes[1]
    x = [e["epoch"] for e in epochs]
    for key, label, colour, style in _SERIES:
        if f"{key}_loss" not in epochs[0]:
            continue
        loss_ax.plot(x, [e[f"{key}_loss"] for e in epochs], style, color=colour, marker=".", lw=1.4, label=label)
        top1_ax.plot(x, [100 * e[f"{key}_top1"] for e in epochs], style, color=colour, marker=".", lw=1.4,
                     label=label)
    _loss_scale(loss_ax, [e[k] for e in epochs for k in ("train_loss", "val_loss") if k in e])
    best = max(epochs, key=lambda e: e["val_top1"])
    top1_ax.plot(best["epoch"], 100 * best["val_top1"], "*", color="tab:orange", ms=11, zorder=3)
    top1_ax.annotate(f"best {100 * best['val_top1']:.2f}%\n(epoch {best['epoch']})", (best["epoch"],
                     100 * best["val_top1"]), xytext=(0, -30), textcoords="offset points", ha="center", fontsize=8,
                     arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6),
                     bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8", alpha=0.9))
    panels = [(loss_ax, "loss"), (top1_ax, "top-1 accuracy (%)")]
    if lr:
        axes[2].plot(lr[0], lr[1], color="tab:purple", lw=1.4)
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        panels.append((axes[2], "learning rate (classifier)"))
    for ax, name in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    top1_ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_training(epochs: Sequence[Mapping], path: str | Path, title: str = "",
                  lr: tuple[Sequence[float], Sequence[float]] | None = None) -> Path:
    """``training_figure`` written as a PNG (a run's curves.png)."""
    return save_png(training_figure(epochs, title, lr), path, dpi=100)


def runs_figure(runs: Mapping[str, Sequence[Mapping]]) -> Figure:
    """Loss and top-1 per epoch of several runs on two panels: one colour per run, training dashed, validation
    solid; the loss axis is logarithmic when the losses span more than a decade.

    Args:
        runs: label -> the run's epochs (metrics.jsonl rows: epoch, train_loss, val_loss, train_top1, val_top1).
    """
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    loss_ax, top1_ax = fig.subplots(1, 2)
    for colour, (label, epochs) in zip(_colours(len(runs)), runs.items()):
        x = [e["epoch"] for e in epochs]
        for split, style in (("train", "--"), ("val", "-")):
            loss_ax.plot(x, [e[f"{split}_loss"] for e in epochs], style, color=colour, marker=".", lw=1.4)
            top1_ax.plot(x, [100 * e[f"{split}_top1"] for e in epochs], style, color=colour, marker=".", lw=1.4)
    _loss_scale(loss_ax, [v for epochs in runs.values() for e in epochs for v in (e["train_loss"], e["val_loss"])])
    for ax, title in ((loss_ax, "loss"), (top1_ax, "top-1 accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=c, lw=2, label=label) for c, label in zip(_colours(len(runs)), runs)]
    handles += [Line2D([], [], color="0.3", ls="--", label="train"), Line2D([], [], color="0.3", label="validation")]
    top1_ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_runs(runs: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """``runs_figure`` written as a PNG."""
    return save_png(runs_figure(runs), path)


# ---------------------------------------------------------------------------------------- accuracy chart
def _family_colours(families: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    # tab20's even entries first (neighbouring families get distinct hues, not a dark/light pair), then tab20b's
    cmap, more = colormaps["tab20"], colormaps["tab20b"]
    order = [cmap(i) for i in range(0, 20, 2)] + [cmap(i) for i in range(1, 20, 2)] + [more(i) for i in range(20)]
    return {f: order[i % len(order)] for i, f in enumerate(sorted(set(families)))}


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap area of box a (x0, y0, x1, y1) with each row of b."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    return float((w * h).sum())


def _place_labels(fig: Figure, ax, points: Sequence[ChartPoint], sizes: np.ndarray) -> list:
    """Annotate each bubble with its label where it collides least (see the module docstring)."""
    renderer = fig.canvas.get_renderer()
    centres = ax.transData.transform(np.c_[[p.macs / 1e9 for p in points], [p.top1 for p in points]])
    radii = np.sqrt(sizes / math.pi) * fig.dpi / 72  # scatter sizes are areas in points^2
    bubbles = np.c_[centres - radii[:, None], centres + radii[:, None]]
    frame = ax.get_window_extent(renderer)
    # Crowded bubbles (many neighbours within 60 px) last: the free space around them is taken last.
    crowd = ((np.linalg.norm(centres[:, None] - centres[None], axis=2) < 60).sum(1))
    placed: list[np.ndarray] = []
    texts = [None] * len(points)
    for i in np.argsort(crowd, kind="stable"):
        probe = ax.text(0, 0, points[i].label, fontsize=LABEL_SIZE)
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h = box.width + 2, box.height + 1
        others = np.delete(bubbles, i, axis=0)
        best, best_cost, best_ring = None, math.inf, 0
        for ring in range(_RINGS):
            for angle in _DIRECTIONS:
                u = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
                centre = centres[i] + u * (radii[i] + 2 + ring * h) + u * np.array([w, h]) / 2
                cand = np.r_[centre - [w / 2, h / 2], centre + [w / 2, h / 2]]
                outside = (max(frame.x0 - cand[0], 0) + max(cand[2] - frame.x1, 0) + max(frame.y0 - cand[1], 0)
                           + max(cand[3] - frame.y1, 0))
                cost = (1e6 * outside + LABEL_WEIGHT * _overlap(cand, np.array(placed).reshape(-1, 4))
                        + _overlap(cand, others))
                if cost < best_cost:
                    best, best_cost, best_ring = cand, cost, ring
            if best_cost == 0:
                break
        placed.append(best)
        offset = ((best[:2] + best[2:]) / 2 - centres[i]) * 72 / fig.dpi  # pixels -> points
        leader = dict(arrowstyle="-", color="0.55", lw=0.5, shrinkA=0, shrinkB=radii[i] * 72 / fig.dpi)
        texts[i] = ax.annotate(points[i].label, (points[i].macs / 1e9, points[i].top1), xytext=tuple(offset),
                               textcoords="offset points", ha="center", va="center", fontsize=LABEL_SIZE,
                               arrowprops=leader if best_ring > 0 else None,
                               bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.7))
    return texts


def _si(n: float) -> str:
    """1e6 -> '1M', 2.5e3 -> '2.5K'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:g}"


def accuracy_figure(points: Sequence[ChartPoint], title: str = "ImageNet top-1 (published) against compute",
                    note: str = "") -> Figure:
    """Top-1 against GMACs per image (log x axis): one bubble per network, its area proportional to the
    parameters, coloured by family, labelled without collisions."""
    if not points:
        raise ValueError("no points to chart")
    fig = Figure(figsize=(14, 9))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.08, 0.72, 0.86))
    colours = _family_colours([p.family for p in points])
    biggest = max(p.params for p in points)
    sizes = np.array([MAX_BUBBLE * p.params / biggest for p in points])
    x, y = np.array([p.macs / 1e9 for p in points]), np.array([p.top1 for p in points])
    ax.scatter(x, y, s=sizes, c=[colours[p.family] for p in points], alpha=0.6, edgecolors="0.25", linewidths=0.5,
               zorder=2)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, 1, 10 rather than 10^-1, 10^0
    pad_y = max(1.0, 0.06 * (y.max() - y.min()))
    ax.set_xlim(x.min() / 1.8, x.max() * 1.8)
    if x.max() / x.min() < 3:  # less than a decade shown: matplotlib labels the minor ticks, in the same style
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(y.min() - pad_y, y.max() + pad_y)
    ax.set_xlabel("GMACs per image (log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    family_handles = [Line2D([], [], ls="", marker="o", ms=8, color=c, alpha=0.7, label=f)
                      for f, c in colours.items()]
    legend = fig.legend(handles=family_handles, title="family", loc="upper left", bbox_to_anchor=(0.80, 0.94),
                        fontsize=8, title_fontsize=9, frameon=False)
    top = 10 ** math.floor(math.log10(biggest))  # reference bubbles: the three powers of ten up to the biggest
    size_handles = [Line2D([], [], ls="", marker="o", color="0.6", alpha=0.6, label=f"{_si(r)} params",
                           ms=math.sqrt(MAX_BUBBLE * r / biggest)) for r in (top / 100, top / 10, top)]
    fig.legend(handles=size_handles, title="bubble area", loc="lower left", bbox_to_anchor=(0.80, 0.08), fontsize=8,
               title_fontsize=9, frameon=False, labelspacing=1.6, borderpad=1.0)
    fig.add_artist(legend)
    if note:
        fig.text(0.06, 0.01, note, fontsize=7, color="0.35")
    _place_labels(fig, ax, points, sizes)
    return fig


def label_boxes(fig: Figure) -> list:
    """Window extents of the chart's labels (the texts of its axes, without their leader lines), for checking
    that none collide."""
    from matplotlib.text import Text

    fig.canvas.draw()  # an annotation's text is positioned when drawn
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for ax in fig.axes for t in ax.texts]
