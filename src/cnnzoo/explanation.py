"""What a network looks at: class activation maps, gradients and deconvolution, for every registered model.

    cam              Zhou et al. 2016, "Learning Deep Features for Discriminative Localization" (arXiv:1512.04150):
                     sum_k w_ck F_k, the target class's classifier weights times the last feature maps. Only for
                     networks that end in global average pooling + one linear layer (checked numerically).
    gradcam          Selvaraju et al. 2017 (arXiv:1610.02391), captum's LayerGradCam.
    gradcam++        Chattopadhay et al. 2018 (arXiv:1710.11063), eq. 19: pixel-wise weights alpha from the
                     second and third powers of the gradient (the exponential-score closed form); hooks, since
                     captum has no Grad-CAM++.
    saliency         Simonyan et al. 2014 (arXiv:1312.6034), captum's Saliency: |d score / d input|.
    guided-backprop  Springenberg et al. 2015 (arXiv:1412.6806), captum's GuidedBackprop.
    deconvnet        Zeiler & Fergus 2014 (arXiv:1311.2901), captum's NeuronDeconvolution: the strongest
                     activation of the layer projected back to pixel space. Max pooling's backward pass routes the
                     signal through the recorded switches, convolution's backward is the transposed filter, and
                     captum applies ReLU to the backward signal at every nn.ReLU: the three parts of the paper.
    features         the layer's feature maps, shown as a grid.

The default layer is ``model.cam_layer`` (the module whose output is ``forward_features``); ``layer`` overrides it.
Guided backprop and deconvnet see only ``nn.ReLU`` modules, not functional calls or other activations.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from PIL import Image

from cnnzoo.artifact import ModelCard
from cnnzoo.checkpoint import Checkpoint, build_model, load_checkpoint
from cnnzoo.errors import UserError
from cnnzoo.images import open_image, preprocess

__all__ = ["METHODS", "Explanation", "explain", "resolve_layer"]

METHODS = ("cam", "gradcam", "gradcam++", "saliency", "guided-backprop", "deconvnet", "features")
LAYER_METHODS = ("cam", "gradcam", "gradcam++")  # a map over the layer's grid, upsampled to the input
PIXEL_METHODS = ("saliency", "guided-backprop", "deconvnet")  # an attribution of the input's shape
INPUT_METHODS = ("saliency", "guided-backprop")  # gradients of the class score: no layer to choose
GRID = 64  # feature maps shown at most by `features`


@dataclass
class Explanation:
    """The result of ``explain``.

    ``map`` is, by method: cam/gradcam/gradcam++, an H x W heat map at the input's resolution scaled to [0, 1];
    saliency/guided-backprop/deconvnet, the C x H x W attribution (the input's shape); features, the layer's
    K x h x w activations. ``raw`` holds cam-style maps at the layer's own resolution, before upsampling."""

    method: str
    map: np.ndarray
    image: np.ndarray  # H x W x C in [0, 1]: the network's input, de-normalised for display
    layer: str
    target: int
    predicted: int
    probability: float  # of the predicted class
    target_probability: float
    classes: list[str] | None = None
    raw: np.ndarray | None = None
    neuron: tuple[int, ...] | None = None  # deconvnet: (channel, y, x) of the strongest activation

    def label(self, index: int) -> str:
        return self.classes[index] if self.classes else str(index)

    @property
    def heatmap(self) -> np.ndarray:
        """H x W in [0, 1]: the map itself for cam-style methods, the channel-wise max of |attribution| for
        pixel methods, the mean feature map upsampled for features."""
        if self.method in LAYER_METHODS:
            return self.map
        if self.method in PIXEL_METHODS:
            return _unit(np.abs(self.map).max(0))
        mean = torch.from_numpy(self.map.mean(0))[None, None]
        return _unit(F.interpolate(mean, size=self.image.shape[:2], mode="bilinear", align_corners=False)[0, 0])

    def title(self) -> str:
        where = f" @ {self.layer}" if self.layer else ""
        text = f"{self.method}{where}: predicted {self.label(self.predicted)} ({self.probability:.1%})"
        if self.target != self.predicted:
            text += f", target {self.label(self.target)} ({self.target_probability:.1%})"
        return text

    def save(self, path: str | Path) -> Path:
        """Write a PNG: the image, and the heat map overlaid on it (features: a grid of the maps)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        image = self.image[..., 0] if self.image.shape[-1] == 1 else self.image
        cmap = "gray" if image.ndim == 2 else None
        if self.method == "features":
            maps = self.map[:GRID]
            cols = int(np.ceil(np.sqrt(len(maps))))
            rows = int(np.ceil(len(maps) / cols))
            fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.6))
            for i, fmap in enumerate(maps):
                ax = fig.add_subplot(rows, cols, i + 1)
                ax.imshow(fmap, cmap="viridis")
                ax.set_axis_off()
        else:
            fig = Figure(figsize=(8, 4.4))
            left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
            left.imshow(image, cmap=cmap)
            right.imshow(image, cmap=cmap)
            right.imshow(self.heatmap, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            for ax in (left, right):
                ax.set_axis_off()
        fig.suptitle(self.title())
        path.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(fig).print_png(str(path))
        return path


def _unit(array) -> np.ndarray:
    """Scale to [0, 1] by min and max. A constant map becomes zeros, also when upsampling left float rounding
    noise on it (a 1x1 Grad-CAM map, as LeNet-5's C5 gives): stretching that noise would paint speckles."""
    array = np.asarray(array, dtype=np.float32)
    span = float(array.max() - array.min())
    if span <= 1e-5 * max(float(np.abs(array).max()), 1e-30):
        return np.zeros_like(array)
    return (array - array.min()) / span


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _resolve_model(model_or_checkpoint) -> tuple[nn.Module, ModelCard | None]:
    """The model in eval mode and, for checkpoints, its card (classes and input contract)."""
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint.eval(), None
    ckpt = model_or_checkpoint if isinstance(model_or_checkpoint, Checkpoint) else load_checkpoint(model_or_checkpoint)
    return build_model(ckpt), ckpt.card


def _resolve_input(image, card: ModelCard | None) -> tuple[torch.Tensor, np.ndarray]:
    """The 1 x C x H x W network input and the H x W x C display image in [0, 1]."""
    if isinstance(image, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(image, dtype=torch.float32)
        x = x[None] if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[0] != 1:
            raise UserError(f"explain takes one image: C x H x W or 1 x C x H x W, not {tuple(x.shape)}")
    else:
        if card is None:
            raise UserError("an image file needs a checkpoint (its preprocessing); with a bare model pass a tensor")
        pil = image if isinstance(image, Image.Image) else open_image(image, channels=card.input.channels)
        x = torch.from_numpy(preprocess(pil, card.input))[None]
    if card is not None:
        mean = torch.tensor(card.input.mean).view(-1, 1, 1)
        std = torch.tensor(card.input.std).view(-1, 1, 1)
        shown = (x[0] * std + mean).clamp(0, 1).numpy()
    else:
        shown = _unit(x[0].numpy())  # normalisation unknown: stretch to [0, 1] for display
    return x, shown.transpose(1, 2, 0)


def resolve_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """(name, module) of a layer by name, default the model's cam_layer; an unknown name is one line naming the
    closest ones."""
    name = layer if layer is not None else getattr(model, "cam_layer", "")
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        close = difflib.get_close_matches(str(name), list(modules), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        what = f"unknown layer {name!r}" if layer is not None else f"{type(model).__name__} declares no cam_layer"
        raise UserError(f"{what} for {type(model).__name__}; {hint}valid layers: {', '.join(modules)}")
    return name, modules[name]


def _resolve_target(target: int | str | None, predicted: int, num_classes: int, classes: list[str] | None) -> int:
    if target is None:
        return predicted
    if isinstance(target, str):
        if classes and target in classes:
            return classes.index(target)
        if not target.lstrip("-").isdigit():
            known = f"; classes: {', '.join(classes)}" if classes else ""
            raise UserError(f"unknown target class {target!r}{known}")
        target = int(target)
    if not 0 <= target < num_classes:
        raise UserError(f"target class {target} out of range: the model has {num_classes} classes")
    return int(target)


def _cam(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> torch.Tensor:
    if name != model.cam_layer:
        raise UserError(f"cam works on the final feature map ({model.cam_layer}); use gradcam for layer {name!r}")
    with torch.no_grad():
        feats = model.forward_features(x)
        fc = model.get_classifier()
        weight = fc.weight.flatten(1)  # nn.Linear: K x C; NiN's 1x1 conv classifier: K x C x 1 x 1
        # CAM needs head(F) == fc(GAP(F)) exactly; testing it numerically needs no knowledge of the family.
        is_gap_fc = weight.shape[1] == feats.shape[1] and torch.allclose(
            model.forward_head(feats), nn.functional.linear(feats.mean((2, 3)), weight, fc.bias), rtol=1e-4, atol=1e-5
        )
        if not is_gap_fc:
            raise UserError(
                f"cam needs a network ending in global average pooling + one linear layer, and "
                f"{type(model).__name__} does not; use gradcam or gradcam++"
            )
        return torch.einsum("k,khw->hw", weight[target], feats[0])


def _gradcam(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> torch.Tensor:
    from captum.attr import LayerGradCam

    return LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)[0].sum(0).detach()


def _layer_output_and_grad(model, x, target, module) -> tuple[torch.Tensor, torch.Tensor]:
    store: list[torch.Tensor] = []

    def hook(mod, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise UserError(f"layer {type(mod).__name__} outputs {type(output).__name__}, not a tensor")
        store.append(output)
        return output.clone()  # later in-place ops (ReLU(inplace=True)) must not change the kept activation

    handle = module.register_forward_hook(hook)
    try:
        score = model(x.clone().requires_grad_(True))[0, target]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, store[0])
    return store[0].detach()[0], grad[0]


def _gradcam_pp(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> torch.Tensor:
    acts, grads = _layer_output_and_grad(model, x, target, module)  # K x h x w each
    if acts.dim() != 3:
        raise UserError(f"gradcam++ needs a spatial layer (K x H x W output); {name!r} gives {tuple(acts.shape)}")
    g2, g3 = grads.pow(2), grads.pow(3)
    denom = 2 * g2 + acts.sum((1, 2), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
    weights = (alpha * F.relu(grads)).sum((1, 2))  # K
    return F.relu(torch.einsum("k,khw->hw", weights, acts))


def _saliency(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=target, abs=True)[0].detach()


def _guided(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    return GuidedBackprop(model).attribute(x, target=target)[0].detach()


def _strongest(model: nn.Module, x: torch.Tensor, module: nn.Module) -> tuple[int, ...]:
    from captum.attr import LayerActivation

    with torch.no_grad():
        acts = LayerActivation(model, module).attribute(x)[0]
    return tuple(int(i) for i in np.unravel_index(int(acts.argmax()), tuple(acts.shape)))


def _deconvnet(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> tuple:
    from captum.attr import NeuronDeconvolution

    neuron = _strongest(model, x, module)
    return NeuronDeconvolution(model, module).attribute(x, neuron_selector=neuron)[0].detach(), neuron


def _features(model: nn.Module, x: torch.Tensor, target: int, name: str, module: nn.Module) -> torch.Tensor:
    from captum.attr import LayerActivation

    with torch.no_grad():
        acts = LayerActivation(model, module).attribute(x)[0]
    if acts.dim() != 3:
        raise UserError(f"features needs a spatial layer (K x H x W output); {name!r} gives {tuple(acts.shape)}")
    return acts


RUNNERS = {
    "cam": _cam,
    "gradcam": _gradcam,
    "gradcam++": _gradcam_pp,
    "saliency": _saliency,
    "guided-backprop": _guided,
    "deconvnet": _deconvnet,
    "features": _features,
}


def explain(
    model_or_checkpoint: nn.Module | str | Path | dict,
    image,
    method: str = "gradcam",
    target: int | str | None = None,
    layer: str | None = None,
) -> Explanation:
    """Explain one prediction.

    Args:
        model_or_checkpoint: a ZooModel, a checkpoint path, or a loaded checkpoint dict.
        image: an image file path, bytes or PIL image (preprocessed as the checkpoint says), or an already
            preprocessed C x H x W / 1 x C x H x W tensor or array.
        method: one of METHODS.
        target: the class to explain (index or class name); None explains the predicted class.
        layer: dotted module name; None uses the model's ``cam_layer``. Saliency and guided-backprop take none.

    Raises:
        UserError: unknown method, layer or class; cam on a network that does not end in GAP + linear.
    """
    if method not in RUNNERS:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    model, card = _resolve_model(model_or_checkpoint)
    x, shown = _resolve_input(image, card)
    x = x.to(next(model.parameters()).device)
    with torch.no_grad():
        probs = F.softmax(model(x), dim=1)[0].cpu()
    classes = list(card.classes) if card else None
    predicted = int(probs.argmax())
    target = _resolve_target(target, predicted, probs.numel(), classes)
    if method in INPUT_METHODS:
        if layer is not None:
            raise UserError(f"{method} attributes the input pixels; --layer applies to {', '.join(LAYER_METHODS)}, "
                            "deconvnet and features")
        name, module = "", model
    else:
        name, module = resolve_layer(model, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns on every call that it hooks ReLUs and that input needs grad
        result = RUNNERS[method](model, x, target, name, module)
    result, neuron = result if isinstance(result, tuple) else (result, None)
    result, raw = result.float().cpu(), None
    if method in LAYER_METHODS:
        raw = result.numpy()
        result = torch.from_numpy(_unit(_upsample(result, tuple(x.shape[2:]))))
    return Explanation(
        method, result.numpy(), shown, name, target, predicted, float(probs[predicted]), float(probs[target]),
        classes, raw, neuron,
    )
