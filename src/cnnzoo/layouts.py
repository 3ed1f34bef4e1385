"""Weight files written by other code bases: how to recognise their key layout and bring it onto a cnnzoo network.

A file that holds cnnzoo's own keys (torchvision's, for every network torchvision has) loads by name and needs
nothing here. A file in another layout loads only through a named converter, and only into the networks that layout
is known to describe exactly: matching tensors by order alone is never enough, because files of different
architectures can hold the same shapes in the same order (timm's ``legacy_seresnet50`` puts the stride on another
convolution than ``seresnet50``; ``tf_efficientnet_b0`` pads like TensorFlow). Each layout is a row of ``LAYOUTS``:

    timm VGG          ``pre_logits.fc1``: the first fully connected layer as a 7x7 convolution, reshaped back
    timm ConvNeXt     ``stem`` / ``stages.i.blocks.j`` / ``gamma`` / ``head``: renamed
    timm RegNet       ``s1.b1.conv1.conv``: renamed
    timm ResNetV2     ``stages.i.blocks.j.norm1``: the pre-activation ResNets, renamed
    timm EfficientNet ``conv_stem`` / ``blocks.s.b``: timm's one builder for EfficientNet, MobileNetV2/V3, MnasNet
                      and MobileNetV1; its module order is rebuilt from the names (so ``.safetensors`` files, which
                      keep no order, work too) and paired with ours
    timm legacy SENet ``layer0`` / ``se_module`` / ``last_linear``: the SE paper's released models, which load
                      into cnnzoo's legacy_se_* networks and never into its (timm-layout) SE-ResNets

``ACCEPTS`` says which cnnzoo networks each layout loads into, ``REFUSALS`` which networks a layout resembles but is
not, with the difference named in the error. Converters return tensors under cnnzoo's names; the caller checks
every name and shape as for any file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import torch

__all__ = ["Layout", "LAYOUTS", "recognise", "refusal", "accepted", "accepting", "convert"]

Tensors = dict[str, torch.Tensor]
Shapes = dict[str, torch.Size]  # the model's keys in its module order, with their shapes


@dataclass(frozen=True)
class Layout:
    name: str
    marker: re.Pattern  # a key that only files of this layout hold
    convert: Callable[[Tensors, Shapes], Tensors]  # the file's tensors under cnnzoo's names


# --- renaming layouts: (pattern, replacement) applied to every key, first match wins; unmatched keys stay ---


def _renamer(rules: list[tuple[str, str | Callable[[re.Match], str]]]) -> Callable[[Tensors, Shapes], Tensors]:
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

    def rename(key: str) -> str:
        for pattern, repl in compiled:
            new, hits = pattern.subn(repl, key)
            if hits:
                return new
        return key

    return lambda theirs, ours: {rename(k): v for k, v in theirs.items()}


TIMM_VGG = _renamer([
    # timm runs the classifier as convolutions; at 224 the 7x7 one sees the whole 7x7 map, as the Linear does.
    (r"^pre_logits\.fc1\.", "classifier.0."),
    (r"^pre_logits\.fc2\.", "classifier.3."),
    (r"^head\.fc\.", "classifier.6."),
])

# ConvNeXt: timm's stage i (downsample, blocks) is torchvision's features 2i (downsample) and 2i+1 (blocks).
_CONVNEXT_BLOCK = r"^stages\.(\d+)\.blocks\.(\d+)\."
TIMM_CONVNEXT = _renamer([
    (r"^stem\.([01])\.", r"features.0.\1."),
    (r"^stages\.(\d+)\.downsample\.([01])\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    *[(_CONVNEXT_BLOCK + theirs, lambda m, ours=ours: f"features.{2 * int(m[1]) + 1}.{m[2]}.{ours}")
      for theirs, ours in (
          (r"gamma$", "layer_scale.gamma"),
          (r"conv_dw\.", "block.0."),
          (r"norm\.", "block.2."),
          (r"mlp\.fc1\.", "block.3."),
          (r"mlp\.fc2\.", "block.5."),
      )],
    (r"^head\.norm\.", "classifier.0."),
    (r"^head\.fc\.", "classifier.2."),
])

# RegNet: timm's s{i}.b{j} (both from 1) is torchvision's trunk_output.block{i}.block{i}-{j-1}.
_REGNET_BLOCK = r"^s(\d+)\.b(\d+)\."
TIMM_REGNET = _renamer([
    (r"^stem\.conv\.", "stem.0."),
    (r"^stem\.bn\.", "stem.1."),
    *[(_REGNET_BLOCK + theirs, lambda m, ours=ours: f"trunk_output.block{m[1]}.block{m[1]}-{int(m[2]) - 1}.{ours}")
      for theirs, ours in (
          (r"conv1\.conv\.", "f.a.0."), (r"conv1\.bn\.", "f.a.1."),
          (r"conv2\.conv\.", "f.b.0."), (r"conv2\.bn\.", "f.b.1."),
          (r"se\.", "f.se."),
          (r"conv3\.conv\.", "f.c.0."), (r"conv3\.bn\.", "f.c.1."),
          (r"downsample\.conv\.", "proj.0."), (r"downsample\.bn\.", "proj.1."),
      )],
    (r"^head\.fc\.", "fc."),
])

# Pre-activation ResNets: timm's stages.{i}.blocks.{j} is layer{i+1}.{j}, its norm{n} our bn{n}.
TIMM_RESNETV2 = _renamer([
    (r"^stem\.conv\.", "conv1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{m[3]}."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv(\d)\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^norm\.", "layer4.norm."),  # timm's ResNetV2 are the four-stage ImageNet networks
    (r"^head\.fc\.", "fc."),
])


# The SE paper's released models: the stem in `layer0` (one 7x7 convolution, or SENet-154's three 3x3 ones, the
# last one's BatchNorm being ours `bn1`), `se_module` for `se`, `last_linear` for `fc`.
_LEGACY_COMMON = [(r"\.se_module\.", ".se."), (r"^last_linear\.", "fc.")]
_LEGACY_STEM = _renamer([(r"^layer0\.conv1\.", "conv1."), (r"^layer0\.bn1\.", "bn1."), *_LEGACY_COMMON])
_LEGACY_DEEP_STEM = _renamer([
    *[(rf"^layer0\.{theirs}\.", f"{ours}.") for theirs, ours in (
        ("conv1", "conv1.0"), ("bn1", "conv1.1"), ("conv2", "conv1.3"), ("bn2", "conv1.4"), ("conv3", "conv1.6"),
        ("bn3", "bn1"),
    )],
    *_LEGACY_COMMON,
])


def _timm_legacy_senet(theirs: Tensors, ours: Shapes) -> Tensors:
    return (_LEGACY_DEEP_STEM if "conv1.0.weight" in ours else _LEGACY_STEM)(theirs, ours)


# --- timm's EfficientNet builder: module order rebuilt from the names, then paired with ours ---

BUILDER_TOP = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier")
BUILDER_BLOCKS = (  # (the convolution that tells the block kind, its children in the order they run)
    ("conv_exp", ("conv_exp", "bn1", "se", "conv_pwl", "bn2")),  # EdgeResidual (Fused-MBConv)
    ("conv_pwl", ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3")),  # InvertedResidual
    ("conv_dw", ("conv_dw", "bn1", "se", "conv_pw", "bn2")),  # DepthwiseSeparable
    ("conv", ("conv", "bn1")),  # ConvBnAct
)
BUILDER_SE = ("conv_reduce", "conv_expand")
TENSOR_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _builder_order(theirs: Tensors) -> list[str]:
    children: dict[str, set[str]] = {}
    for key in theirs:
        parts = key.split(".")
        if parts[0] == "blocks":
            children.setdefault(".".join(parts[:3]), set()).add(parts[3])
    kinds = {block: next((order for tell, order in BUILDER_BLOCKS if tell in names), ())
             for block, names in children.items()}

    def rank(key: str) -> tuple:
        parts = key.split(".")
        top = BUILDER_TOP.index(parts[0]) if parts[0] in BUILDER_TOP else len(BUILDER_TOP)
        if parts[0] != "blocks":
            return (top, 0, 0, 0, 0, TENSOR_ORDER.index(parts[-1]) if parts[-1] in TENSOR_ORDER else 9, key)
        order = kinds[".".join(parts[:3])]
        child = order.index(parts[3]) if parts[3] in order else len(order)
        inner = BUILDER_SE.index(parts[4]) if parts[3] == "se" and parts[4] in BUILDER_SE else 0
        tensor = TENSOR_ORDER.index(parts[-1]) if parts[-1] in TENSOR_ORDER else 9
        return (top, int(parts[1]), int(parts[2]), child, inner, tensor, key)

    return sorted(theirs, key=rank)


def _timm_builder(theirs: Tensors, ours: Shapes) -> Tensors:
    # BatchNorm's step counters are left out on both sides: some files drop them, and eval never reads them.
    order = [k for k in _builder_order(theirs) if not k.endswith("num_batches_tracked")]
    own = [k for k in ours if not k.endswith("num_batches_tracked")]
    if len(order) != len(own):
        return theirs  # not this network: the caller's name check reports the difference
    return dict(zip(own, (theirs[k] for k in order)))


LAYOUTS = (
    Layout("timm VGG (convolutional pre-logits)", re.compile(r"^pre_logits\.fc1\.weight$"), TIMM_VGG),
    Layout("timm ConvNeXt", re.compile(r"^stages\.\d+\.blocks\.\d+\.conv_dw\."), TIMM_CONVNEXT),
    Layout("timm RegNet", re.compile(r"^s\d+\.b\d+\.conv1\.conv\.weight$"), TIMM_REGNET),
    Layout("timm ResNetV2 (pre-activation)", re.compile(r"^stages\.\d+\.blocks\.\d+\.norm1\."), TIMM_RESNETV2),
    Layout("timm EfficientNet builder", re.compile(r"^conv_stem\.weight$"), _timm_builder),
    Layout("timm legacy SENet (the SE paper's release)", re.compile(r"^layer0\.conv1\.weight$"), _timm_legacy_senet),
)

# The cnnzoo networks each layout describes exactly (checked output for output against timm in tests/test_layouts.py),
# with the BatchNorm epsilon of the networks that write such files.
ACCEPTS = (
    ("timm VGG", r"vgg(11|13|16|19)(_bn)?", 1e-5),
    ("timm ConvNeXt", r"convnext_(tiny|small|base|large)", 1e-5),
    ("timm RegNet", r"regnet_[xy]_\w+", 1e-5),
    ("timm ResNetV2", r"preact_resnet(18|34|50)", 1e-5),
    ("timm legacy SENet", r"legacy_se_resnet\d+|legacy_se_resnext\w+|legacy_senet154", 1e-5),
    ("timm EfficientNet builder",
     r"efficientnet_b[0-7]|mobilenet_v2|mobilenet_v3_(large|small)|mnasnet(0_5|0_75|1_0)", 1e-5),
    ("timm EfficientNet builder", r"tf_efficientnet_b[0-7]", 1e-3),
    ("timm EfficientNet builder", r"tf_efficientnetv2_(s|m|l|b[0-3])", 1e-3),
)

# timm's TensorFlow ports (tf_efficientnet_*, tf_mobilenetv3_*, ...) hold the same tensors as its own EfficientNet
# builder networks but pad like TensorFlow ("SAME": more on the bottom/right). Nothing in the file tells them apart,
# so the file's path, which names the timm architecture wherever timm or the Hugging Face hub saved it, is read.
TF_PORT = re.compile(r"(?:^|[^a-z0-9])tf_(?:efficientnet|mobilenet|mixnet|mnasnet)", re.IGNORECASE)
NOT_TF_PORT = re.compile(r"(?:^|[^a-z0-9_])(?:efficientnet(?:v2)?|mobilenetv\d|mixnet|mnasnet)_", re.IGNORECASE)
NOT_TF_PORT_REFUSAL = (
    "its path names one of timm's own EfficientNet-builder networks (symmetric padding, BatchNorm eps 1e-5), not"
    " a TensorFlow port (tf_*): an efficientnet_b* file loads into the cnnzoo network without the tf_ prefix;"
    " timm's own efficientnetv2_* have no cnnzoo counterpart"
)
TF_PORT_REFUSAL = (
    "its path names one of timm's TensorFlow ports (tf_*), which pad like TensorFlow ('SAME', more on the bottom and"
    " right); cnnzoo's networks pad symmetrically, so the outputs would differ"
)

# Networks a layout resembles (same shapes, often the same order) but is not: loading would change the outputs.
REFUSALS = {
    ("timm legacy SENet", r"se_resnet\d+|se_resnext\w+|senet154"): (
        "the SE paper's released models (timm's legacy_se*) put the stride of SE-ResNet's downsampling bottlenecks"
        " in the first 1x1 convolution, pool the stem in ceil mode and round squeeze widths down; load the file into"
        " cnnzoo's legacy_ network of the same depth (legacy_se_resnet50, legacy_se_resnext50_32x4d,"
        " legacy_senet154, ...)"
    ),
    ("timm EfficientNet builder", r"mobilenet_v1\w*"): (
        "timm's mobilenetv1_* use ReLU6 where the paper (and cnnzoo's mobilenet_v1) uses ReLU"
    ),
    ("timm EfficientNet builder", r"efficientnet_v2_\w+"): (
        "cnnzoo's efficientnet_v2_* are torchvision's (symmetric padding); timm's efficientnetv2_* are its own"
        " variants and its tf_efficientnetv2_* pad like TensorFlow ('SAME'): load a tf_efficientnetv2_s/m/l/b0..b3"
        " file into cnnzoo's network of the same name"
    ),
}


def recognise(keys) -> Layout | None:
    """The foreign layout a file's keys are written in, or None."""
    keys = list(keys)
    return next((layout for layout in LAYOUTS if any(layout.marker.match(k) for k in keys)), None)


def _family(layout: Layout) -> str:
    return layout.name.split(" (")[0]


def refusal(layout: Layout, model_name: str, path: str = "") -> str | None:
    """Why a file of ``layout`` must not load into ``model_name`` (None when it may, or when nothing is known)."""
    family = _family(layout)
    if family == "timm EfficientNet builder":
        tf_path, tf_model = bool(TF_PORT.search(path)), model_name.startswith("tf_")
        if tf_path and not tf_model:
            return TF_PORT_REFUSAL
        if tf_model and not tf_path and NOT_TF_PORT.search(path):
            return NOT_TF_PORT_REFUSAL
    return next((why for (fam, names), why in REFUSALS.items() if fam == family and re.fullmatch(names, model_name)),
                None)


def accepted(layout: Layout, model_name: str) -> float | None:
    """The BatchNorm epsilon of ``layout``'s files when they load into ``model_name``; None when they do not."""
    family = _family(layout)
    return next((eps for fam, names, eps in ACCEPTS if fam == family and re.fullmatch(names, model_name)), None)


def accepting(layout: Layout) -> str:
    """The names a layout loads into, as one pattern for messages."""
    return "|".join(names for fam, names, _ in ACCEPTS if fam == _family(layout))


def _fit(tensor: torch.Tensor, shape: torch.Size | None) -> torch.Tensor:
    """A converted tensor in the shape of ours: convolutional classifiers become matrices (a 1x1 or whole-map
    convolution is a Linear layer), timm's flat layer-scale gains ours' (C, 1, 1). Class counts may differ."""
    if shape is None or tensor.shape == shape:
        return tensor
    if tensor.numel() == prod(shape):
        return tensor.reshape(shape)
    if tensor.dim() == 4 and len(shape) == 2 and tensor.shape[2:] == (1, 1):
        return tensor.flatten(1)  # a 1x1-convolution classifier with another class count
    return tensor


def convert(layout: Layout, theirs: Tensors, ours: Shapes, bn_eps: dict[str, float], file_eps: float) -> Tensors:
    """The file's tensors under cnnzoo's names and shapes. ``bn_eps`` maps each of the model's BatchNorm layers to
    its epsilon: where it differs from the file's, the running variance absorbs the difference, which is exact in
    eval mode: (x - mean) / sqrt((var + eps_file - eps_ours) + eps_ours) is the file's own normalisation."""
    converted = {k: _fit(v, ours.get(k)) for k, v in layout.convert(theirs, ours).items()}
    for name, eps in bn_eps.items():
        key = f"{name}.running_var"
        if key in converted and eps != file_eps:
            converted[key] = converted[key] + (file_eps - eps)
    return converted
