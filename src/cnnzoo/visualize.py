"""Textbook pictures of what a trained network has learnt, for `cnnzoo explain --method top-activations | filters`.

    top_activations(ckpt, folder, layer)   Zeiler & Fergus 2014 (arXiv:1311.2901), Figure 2: for each of several
                                           feature maps of a layer, its strongest activations over a folder of
                                           images, each shown as its deconvnet reconstruction (projected back to
                                           pixels) beside the input patch that the activation sees.
    first_layer_filters(ckpt)              Krizhevsky et al. 2012, Figure 3: the first convolution's kernels as a
                                           grid of small images, each filter stretched to [0, 1] on its own.

Top activations. Every image of the folder (recursively) is loaded and preprocessed exactly as the checkpoint's
own evaluation preprocessing does it (cnnzoo.images.open_image and preprocess with the checkpoint's input spec,
as prediction and the runtimes do). Each image contributes, per feature map, its largest activation (the map's
maximum over positions), so the top k of a map are k different images, as in the paper. Without an explicit list
of channels, the maps shown are those with the largest activation over the folder (dead maps are not worth a
panel). The reconstruction is cnnzoo.explanation's deconvnet of that one activation (captum's
NeuronDeconvolution: switches through max pooling, transposed filters, ReLU on the backward signal); the patch is
the activation's receptive field in the input, from cnnzoo.summarize: output (y, x) of the layer sees input rows
start + y * jump ... + RF - 1 (zero outside the image), and the reconstruction is cropped to the same box.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnzoo.checkpoint import Checkpoint, build_model, load_checkpoint
from cnnzoo.explanation import resolve_layer
from cnnzoo.errors import UserError
from cnnzoo.images import ImageError, image_files, open_image, preprocess

__all__ = ["Hit", "TopActivations", "Filters", "top_activations", "first_layer_filters", "VISUALIZATIONS"]

VISUALIZATIONS = ("top-activations", "filters")
BATCH = 32  # images per forward pass while scanning the folder


# ------------------------------------------------------------------------------------------------ common
def _load(source: str | Path | Checkpoint) -> tuple[nn.Module, Checkpoint]:
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    return build_model(ckpt), ckpt


def _stretch(array: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant array becomes mid-grey (it shows no structure, not darkness)."""
    array = np.asarray(array, dtype=np.float32)
    span = float(array.max() - array.min()) if array.size else 0.0
    return (array - array.min()) / span if span > 0 else np.full_like(array, 0.5)


GAP = (0.33, 0.47, 0.68)  # the colour between tiles: no pixel of a grey tile has it


def _mosaic(tiles: list[np.ndarray], cols: int, gap: int = 1) -> np.ndarray:
    """H x W x C tiles of one size (C = 1 or 3) as one RGB grid, ``gap`` coloured pixels between them."""
    h, w, _ = tiles[0].shape
    rows = math.ceil(len(tiles) / cols)
    out = np.empty((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), np.float32)
    out[:] = GAP
    for i, tile in enumerate(tiles):
        r, k = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = tile  # grey broadcasts to RGB
    return out


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: str | Path) -> Path:
    from cnnzoo.plots import save_png

    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------- filters
@dataclass
class Filters:
    """The first convolution's kernels: ``weights`` K x C x kh x kw, as the checkpoint holds them."""

    model_name: str
    layer: str
    weights: np.ndarray

    def tiles(self) -> list[np.ndarray]:
        """Each filter as a kh x kw x C image, stretched to [0, 1] over all its channels together (AlexNet's
        Figure 3), so a filter's colour balance stays visible."""
        return [_stretch(w).transpose(1, 2, 0) for w in self.weights]

    def figure(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        k, c, kh, kw = self.weights.shape
        cols = math.ceil(math.sqrt(k))
        mosaic = _mosaic(self.tiles(), cols)
        scale = max(0.09, 7.0 / mosaic.shape[1])  # inches per pixel: about 7 inches wide
        fig = Figure(figsize=(mosaic.shape[1] * scale + 0.4, mosaic.shape[0] * scale + 0.8))
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.03, 0.03, 0.94, 0.86))
        _show(ax, mosaic)
        colour = "RGB" if c == 3 else "grey"
        fig.suptitle(f"{self.model_name} {self.layer}: {k} filters {kh}x{kw} ({colour}), each stretched to [0, 1]",
                     fontsize=9)
        return fig

    def save(self, path: str | Path) -> Path:
        return _save(self.figure(), path)


def _first_conv(model: nn.Module, channels: int) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == channels:
            return name, module
    raise UserError(f"{type(model).__name__} has no convolution taking the {channels}-channel image")


def first_layer_filters(source: str | Path | Checkpoint) -> Filters:
    """The kernels of the checkpoint's first convolution (the first nn.Conv2d that takes the image's channels)."""
    model, ckpt = _load(source)
    name, conv = _first_conv(model, ckpt.card.input.channels)
    weights = conv.weight.detach().float().cpu().numpy()
    if weights.shape[1] not in (1, 3):
        weights = weights[:, :1]  # a grouped stem: show one channel per filter
    return Filters(ckpt.card.model_name, name, weights)


# --------------------------------------------------------------------------------------- top activations
@dataclass
class Hit:
    """One of a feature map's strongest activations over the folder."""

    image: str  # the file
    value: float  # the activation
    position: tuple[int, int]  # (y, x) in the layer's map
    box: tuple[int, int, int, int]  # the receptive field in the network's input (top, left, height, width), the
    # whole input on an axis where every position's field covers it (_spans_input)
    reconstruction: np.ndarray  # h x w x C, the deconvnet projection cropped to ``box``, stretched to [0, 1]
    patch: np.ndarray  # h x w x C, the network's input in ``box``, de-normalised to [0, 1] (zeros outside)


@dataclass
class TopActivations:
    """The result of ``top_activations``: per channel, its hits, strongest first."""

    model_name: str
    layer: str
    rf: tuple[int, int]
    jump: tuple[int, int]
    images: int  # images scanned
    hits: dict[int, list[Hit]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unreadable files, with the reason

    def figure(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        top = max(len(h) for h in self.hits.values())
        grid = math.ceil(math.sqrt(top))  # each map's hits as a grid x grid mosaic
        cols = math.ceil(math.sqrt(len(self.hits)))
        rows = math.ceil(len(self.hits) / cols)
        fig = Figure(figsize=(4.2 * cols, 2.3 * rows + 0.7))
        FigureCanvasAgg(fig)
        spec = fig.add_gridspec(rows, 2 * cols, wspace=0.05, hspace=0.3, left=0.01, right=0.99, bottom=0.01,
                                top=1 - 0.7 / (2.3 * rows + 0.7))
        for i, (channel, hits) in enumerate(self.hits.items()):
            r, c = divmod(i, cols)
            for j, (key, what) in enumerate((("reconstruction", "deconvnet"), ("patch", "input"))):
                ax = fig.add_subplot(spec[r, 2 * c + j])
                _show(ax, _mosaic([getattr(h, key) for h in hits], grid))
                ax.set_title(f"map {channel}: {what}", fontsize=8)
        rf = "x".join(map(str, self.rf)) if self.rf[0] != self.rf[1] else str(self.rf[0])
        fig.suptitle(f"{self.model_name} {self.layer}: the top {top} activations of {len(self.hits)} feature maps "
                     f"over {self.images} images (receptive field {rf} px, jump {self.jump[0]})", fontsize=10)
        return fig

    def save(self, path: str | Path) -> Path:
        return _save(self.figure(), path)


class _ChannelProbe(nn.Module):
    """The network with one channel of one of its layers also passed through a module of its own, ``probe``:
    explain's deconvnet of the strongest activation of ``probe`` is then the deconvnet of that channel's."""

    def __init__(self, net: nn.Module, layer: nn.Module, channel: int):
        super().__init__()
        self.net, self.probe, self.channel = net, nn.Identity(), channel
        self._layer = (layer,)  # a tuple: not registered a second time as a child

    def _tap(self, module, inputs, output) -> None:
        # a copy: an in-place ReLU after the layer must not change what the probe saw
        self.probe(output[:, self.channel : self.channel + 1].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handle = self._layer[0].register_forward_hook(self._tap)
        try:
            return self.net(x)
        finally:
            handle.remove()


def _field(model: nn.Module, input_size, layer: str) -> tuple[tuple[int, int], ...]:
    """(RF, jump, start, positions) of the layer's output: its last row in the summary (a module's output is its last
    row); positions: the map's (H, W)."""
    from cnnzoo.summary import summarize

    rows = [r for r in summarize(model, tuple(input_size)).rows
            if (r.name == layer or r.name.startswith(layer + ".")) and not r.aux]
    if not rows:
        raise UserError(f"layer {layer!r} does not run in an inference pass")
    row = rows[-1]
    return tuple(row.rf), tuple(row.jump), tuple(row.rf_start), tuple(row.out_shape[-2:])


def _spans_input(start: int, rf: int, jump: int, positions: int, extent: int) -> bool:
    """Whether on this axis the field of every position of the map covers the whole input. The patches then show
    the input on that axis, not a field that is mostly padding (ResNet-18's last map sees 435 px of a 64 px input,
    which drew the image as a speck in a black tile); every patch of a map keeps one size either way."""
    return start + (positions - 1) * jump <= 0 and start + rf >= extent


def _scan(model: nn.Module, module: nn.Module, files: list[Path], spec, skipped: list[str]
          ) -> tuple[np.ndarray, list[Path]]:
    """The largest activation of each channel of the layer (over positions) in each readable image: N x K."""
    seen: list[torch.Tensor | None] = []
    # Reduced at once: an in-place ReLU after the layer would otherwise change the kept output.
    hook = module.register_forward_hook(lambda m, i, out: seen.append(
        out.detach().flatten(2).amax(2) if isinstance(out, torch.Tensor) and out.dim() == 4 else None))
    values, kept = [], []
    try:
        for start in range(0, len(files), BATCH):
            arrays = []
            for f in files[start : start + BATCH]:
                try:
                    arrays.append(preprocess(open_image(f, channels=spec.channels), spec))
                    kept.append(f)
                except ImageError as err:
                    skipped.append(str(err))
            if not arrays:
                continue
            seen.clear()
            with torch.no_grad():
                model(torch.from_numpy(np.stack(arrays)))
            if not seen or seen[-1] is None:
                raise UserError("top-activations needs a layer with a spatial output (N x K x H x W)")
            values.append(seen[-1].float().numpy())  # the last call, if the module runs more than once
    finally:
        hook.remove()
    if not kept:
        raise UserError("no readable image in the folder")
    return np.concatenate(values), kept


def _crop(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """C x H x W -> height x width x C at (top, left), zeros where the box leaves the array."""
    c, h, w = array.shape
    out = np.zeros((c, height, width), np.float32)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + height, h), min(left + width, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = array[:, y0:y1, x0:x1]
    return out.transpose(1, 2, 0)


def _hit(model, module, channel: int, path: Path, value: float, spec, rf, jump, start, spans) -> Hit:
    from cnnzoo.explanation import explain

    x = preprocess(open_image(path, channels=spec.channels), spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = explain(_ChannelProbe(model, module, channel), x, method="deconvnet", layer="probe")
    y, xx = result.neuron[-2:]
    top, left = start[0] + y * jump[0], start[1] + xx * jump[1]
    box = (0 if spans[0] else top, 0 if spans[1] else left, spec.height if spans[0] else rf[0],
           spec.width if spans[1] else rf[1])
    mean, std = np.asarray(spec.mean, np.float32)[:, None, None], np.asarray(spec.std, np.float32)[:, None, None]
    shown = np.clip(x * std + mean, 0, 1)
    return Hit(str(path), value, (int(y), int(xx)), box, _stretch(_crop(result.map, *box)), _crop(shown, *box))


def top_activations(source: str | Path | Checkpoint, data: str | Path, layer: str | None = None, maps: int = 16,
                    top: int = 9, channels: list[int] | None = None) -> TopActivations:
    """Zeiler & Fergus' figure for one layer of a checkpoint (see the module docstring).

    Args:
        source: a cnnzoo checkpoint (path or loaded).
        data: a folder of images (searched recursively).
        layer: dotted module name; default the model's ``cam_layer`` (its last feature map).
        maps: how many feature maps to show (the strongest ones), unless ``channels`` names them.
        top: activations per map (k different images).

    Raises:
        UserError: no such folder or layer, a layer without a spatial output, no readable image, maps or top < 1.
    """
    if maps < 1 or top < 1:
        raise UserError(f"--maps and --top must be at least 1, not {maps} and {top}")
    if data is None or not Path(data).is_dir():
        raise UserError(f"top-activations needs a folder of images (--data DIR), not {data}")
    files = image_files(data)
    if not files:
        raise UserError(f"{data}: no image files in this folder")
    model, ckpt = _load(source)
    spec = ckpt.card.input
    name, module = resolve_layer(model, layer)
    result = TopActivations(ckpt.card.model_name, name, (0, 0), (0, 0), 0)
    values, kept = _scan(model, module, files, spec, result.skipped)
    result.rf, result.jump, start, positions = _field(model, spec.size, name)
    spans = tuple(_spans_input(start[a], result.rf[a], result.jump[a], positions[a], spec.size[1 + a]) for a in (0, 1))
    result.images = len(kept)
    if channels is None:
        channels = sorted(np.argsort(-values.max(0), kind="stable")[:maps].tolist())
    elif not all(0 <= c < values.shape[1] for c in channels):
        raise UserError(f"channels must lie in 0..{values.shape[1] - 1}, not {channels}")
    for c in channels:
        order = np.argsort(-values[:, c], kind="stable")[:top]
        result.hits[c] = [_hit(model, module, c, kept[i], float(values[i, c]), spec, result.rf, result.jump, start,
                               spans) for i in order]
    return result
