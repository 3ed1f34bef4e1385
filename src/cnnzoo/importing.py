"""Published weights as a cnnzoo model: ``import_weights`` packs a torchvision or timm weight file with its network,
its class names and the preprocessing its publisher evaluated it with into a cnnzoo checkpoint. evaluate, predict,
export, explain and serve then take it as they take a trained one: one artifact, one input contract on every path.

The preprocessing is the publisher's wherever it is known, never cnnzoo's default in its place:

    torchvision  the ImageClassification transform of the weights entry the file is: found by the torch hub file
                 name, else by content (torchvision's file names carry the first hex digits of the file's SHA-256),
                 else the network's IMAGENET1K_V1 entry. Read from the installed torchvision, nothing downloaded.
    timm         timm's pretrained configuration of the default tag (TIMM_EVAL) of the networks whose weights only
                 timm releases. Another tag's recipe may differ: state it (``preprocessing``).
    otherwise    cnnzoo's photo contract (artifact.photo_spec): the shorter side to H / 0.875, centre crop, bilinear,
                 ImageNet statistics.

Any part can be stated instead (``preprocessing``: InputSpec fields such as resize_size, interpolation, mean, std).
Class names: ImageNet-1k's, from torchvision's metadata, for a 1000-class file; otherwise the caller's.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from cnnzoo.artifact import IMAGENET_MEAN, IMAGENET_STD, InputSpec, ModelCard, photo_spec, resolve_input_size
from cnnzoo.checkpoint import save_checkpoint
from cnnzoo.errors import UserError
from cnnzoo.published import PREFERRED_WEIGHTS
from cnnzoo.registry import create_model, model_info
from cnnzoo.transfer import LoadReport, load_pretrained

__all__ = ["Preprocessing", "ImportReport", "TIMM_EVAL", "import_weights", "published_preprocessing",
           "trained_input", "imagenet_classes", "read_class_names"]

IMAGENET = IMAGENET_MEAN, IMAGENET_STD
INCEPTION = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # timm's IMAGENET_INCEPTION_MEAN / _STD: inputs in [-1, 1]

# timm 1.0's pretrained configurations of its ImageNet-1k tags of the networks only timm releases weights of (and
# of Inception-v3, whose timm files load by torchvision's names: a timm path picks these rows), each
# network's default tag first (timm/models/*.py default_cfgs): tag: (cnnzoo network, input side, crop_pct,
# crop_mode, interpolation, (mean, std)). "center": the shorter side to floor(side / crop_pct), then the centre
# crop; "squash" (crop_pct 1): straight to side x side, cnnzoo's "stretch". Left out: tf_efficientnetv2_b3's
# in21k_ft_in1k (squash at crop_pct 0.9, which no cnnzoo policy is). tests/test_importing.py checks every row
# against the installed timm.
TIMM_EVAL: dict[str, tuple[str, int, float, str, str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "inception_v3.tv_in1k": ("inception_v3", 299, 0.875, "center", "bicubic", INCEPTION),
    "inception_v3.tf_in1k": ("inception_v3", 299, 0.875, "center", "bicubic", INCEPTION),
    "inception_v3.tf_adv_in1k": ("inception_v3", 299, 0.875, "center", "bicubic", INCEPTION),
    "inception_v3.gluon_in1k": ("inception_v3", 299, 0.875, "center", "bicubic", IMAGENET),
    "inception_v4.tf_in1k": ("inception_v4", 299, 0.875, "center", "bicubic", INCEPTION),
    "inception_resnet_v2.tf_in1k": ("inception_resnet_v2", 299, 0.8975, "center", "bicubic", INCEPTION),
    "inception_resnet_v2.tf_ens_adv_in1k": ("inception_resnet_v2", 299, 0.8975, "center", "bicubic", INCEPTION),
    "legacy_xception.tf_in1k": ("xception", 299, 0.8975, "center", "bicubic", INCEPTION),
    "nasnetalarge.tf_in1k": ("nasnet_a_large", 331, 0.911, "center", "bicubic", INCEPTION),
    "legacy_seresnet18.in1k": ("legacy_se_resnet18", 224, 0.875, "center", "bicubic", IMAGENET),
    "legacy_seresnet34.in1k": ("legacy_se_resnet34", 224, 0.875, "center", "bilinear", IMAGENET),
    "legacy_seresnet50.in1k": ("legacy_se_resnet50", 224, 0.875, "center", "bilinear", IMAGENET),
    "legacy_seresnet101.in1k": ("legacy_se_resnet101", 224, 0.875, "center", "bilinear", IMAGENET),
    "legacy_seresnet152.in1k": ("legacy_se_resnet152", 224, 0.875, "center", "bilinear", IMAGENET),
    "legacy_seresnext50_32x4d.in1k": ("legacy_se_resnext50_32x4d", 224, 0.875, "center", "bilinear", IMAGENET),
    "legacy_seresnext101_32x4d.in1k": ("legacy_se_resnext101_32x4d", 224, 0.875, "center", "bilinear", IMAGENET),
    "legacy_senet154.in1k": ("legacy_senet154", 224, 0.875, "center", "bilinear", IMAGENET),
    "seresnet50.a1_in1k": ("se_resnet50", 224, 0.95, "center", "bicubic", IMAGENET),
    "seresnet50.a2_in1k": ("se_resnet50", 224, 0.95, "center", "bicubic", IMAGENET),
    "seresnet50.a3_in1k": ("se_resnet50", 160, 0.95, "center", "bicubic", IMAGENET),
    "seresnet50.ra2_in1k": ("se_resnet50", 224, 0.875, "center", "bicubic", IMAGENET),
    "seresnext50_32x4d.racm_in1k": ("se_resnext50_32x4d", 224, 0.875, "center", "bicubic", IMAGENET),
    "seresnext50_32x4d.gluon_in1k": ("se_resnext50_32x4d", 224, 0.875, "center", "bicubic", IMAGENET),
    "senet154.gluon_in1k": ("senet154", 224, 0.875, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b0.ns_jft_in1k": ("tf_efficientnet_b0", 224, 0.875, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b0.ap_in1k": ("tf_efficientnet_b0", 224, 0.875, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b0.aa_in1k": ("tf_efficientnet_b0", 224, 0.875, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b0.in1k": ("tf_efficientnet_b0", 224, 0.875, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b1.ns_jft_in1k": ("tf_efficientnet_b1", 240, 0.882, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b1.ap_in1k": ("tf_efficientnet_b1", 240, 0.882, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b1.aa_in1k": ("tf_efficientnet_b1", 240, 0.882, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b1.in1k": ("tf_efficientnet_b1", 240, 0.882, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b2.ns_jft_in1k": ("tf_efficientnet_b2", 260, 0.89, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b2.ap_in1k": ("tf_efficientnet_b2", 260, 0.89, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b2.aa_in1k": ("tf_efficientnet_b2", 260, 0.89, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b2.in1k": ("tf_efficientnet_b2", 260, 0.89, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b3.ns_jft_in1k": ("tf_efficientnet_b3", 300, 0.904, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b3.ap_in1k": ("tf_efficientnet_b3", 300, 0.904, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b3.aa_in1k": ("tf_efficientnet_b3", 300, 0.904, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b3.in1k": ("tf_efficientnet_b3", 300, 0.904, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b4.ns_jft_in1k": ("tf_efficientnet_b4", 380, 0.922, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b4.ap_in1k": ("tf_efficientnet_b4", 380, 0.922, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b4.aa_in1k": ("tf_efficientnet_b4", 380, 0.922, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b4.in1k": ("tf_efficientnet_b4", 380, 0.922, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b5.ns_jft_in1k": ("tf_efficientnet_b5", 456, 0.934, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b5.ap_in1k": ("tf_efficientnet_b5", 456, 0.934, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b5.ra_in1k": ("tf_efficientnet_b5", 456, 0.934, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b5.aa_in1k": ("tf_efficientnet_b5", 456, 0.934, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b5.in1k": ("tf_efficientnet_b5", 456, 0.934, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b6.ns_jft_in1k": ("tf_efficientnet_b6", 528, 0.942, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b6.ap_in1k": ("tf_efficientnet_b6", 528, 0.942, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b6.aa_in1k": ("tf_efficientnet_b6", 528, 0.942, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b7.ns_jft_in1k": ("tf_efficientnet_b7", 600, 0.949, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b7.ap_in1k": ("tf_efficientnet_b7", 600, 0.949, "center", "bicubic", INCEPTION),
    "tf_efficientnet_b7.ra_in1k": ("tf_efficientnet_b7", 600, 0.949, "center", "bicubic", IMAGENET),
    "tf_efficientnet_b7.aa_in1k": ("tf_efficientnet_b7", 600, 0.949, "center", "bicubic", IMAGENET),
    "tf_efficientnetv2_s.in21k_ft_in1k": ("tf_efficientnetv2_s", 300, 1.0, "center", "bicubic", INCEPTION),
    "tf_efficientnetv2_s.in1k": ("tf_efficientnetv2_s", 300, 1.0, "center", "bicubic", INCEPTION),
    "tf_efficientnetv2_m.in21k_ft_in1k": ("tf_efficientnetv2_m", 384, 1.0, "squash", "bicubic", INCEPTION),
    "tf_efficientnetv2_m.in1k": ("tf_efficientnetv2_m", 384, 1.0, "squash", "bicubic", INCEPTION),
    "tf_efficientnetv2_l.in21k_ft_in1k": ("tf_efficientnetv2_l", 384, 1.0, "squash", "bicubic", INCEPTION),
    "tf_efficientnetv2_l.in1k": ("tf_efficientnetv2_l", 384, 1.0, "squash", "bicubic", INCEPTION),
    "tf_efficientnetv2_b0.in1k": ("tf_efficientnetv2_b0", 192, 0.875, "center", "bicubic", IMAGENET),
    "tf_efficientnetv2_b1.in1k": ("tf_efficientnetv2_b1", 192, 0.882, "center", "bicubic", IMAGENET),
    "tf_efficientnetv2_b2.in1k": ("tf_efficientnetv2_b2", 208, 0.89, "center", "bicubic", IMAGENET),
    "tf_efficientnetv2_b3.in1k": ("tf_efficientnetv2_b3", 240, 0.904, "center", "bicubic", IMAGENET),
    "resnetv2_50.a1h_in1k": ("preact_resnet50", 224, 0.95, "center", "bicubic", INCEPTION),
    "resnetv2_101.a1h_in1k": ("preact_resnet101", 224, 0.95, "center", "bicubic", INCEPTION),
}

_SPEC_FIELDS = {f.name for f in fields(InputSpec)} - {"channels", "height", "width"}


@dataclass(frozen=True)
class Preprocessing:
    """The input contract recorded with imported weights, and where it comes from."""

    spec: InputSpec
    source: str  # e.g. "torchvision ResNet50_Weights.IMAGENET1K_V2 (the file's name)"
    top1: float | None = None  # the publisher's ImageNet-1k top-1 (%) of these very weights, where known
    published: bool = True  # False: nobody's known contract, cnnzoo's default stands in


@dataclass
class ImportReport:
    """What import_weights wrote; ``str(report)`` is what `cnnzoo import` prints."""

    path: Path
    card: ModelCard
    load: LoadReport
    preprocessing: Preprocessing
    classes_source: str

    def __str__(self) -> str:
        top1 = self.preprocessing.top1
        published = "" if top1 is None else f"; published ImageNet top-1 {top1:g}%"
        return "\n".join([
            f"wrote {self.path}: {self.card.model_name}, {self.load.loaded} tensors from {self.load.path}"
            + (f" ({self.load.layout} layout)" if self.load.layout else ""),
            f"classes: {self.card.num_classes} ({self.classes_source})",
            f"input: {self.card.input.describe()}, mean {list(self.card.input.mean)} std {list(self.card.input.std)}",
            f"  from {self.preprocessing.source}{published}",
        ])


def _torchvision_entries(name: str) -> list:
    from torchvision.models import get_model_weights

    try:
        return list(get_model_weights(name))
    except (ValueError, KeyError):  # a network torchvision does not have
        return []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identify(entries: list, path: Path) -> tuple[object, str]:
    """The torchvision weights entry ``path`` is, and how it was told."""
    for entry in entries:
        if Path(entry.url).name == path.name:
            return entry, "the file's name"
    prefixes = {entry: re.search(r"-([0-9a-f]{8,})\.\w+$", Path(entry.url).name) for entry in entries}
    digest = _sha256(path) if any(prefixes.values()) else ""
    for entry, match in prefixes.items():
        if match and digest.startswith(match.group(1)):
            return entry, "the file's SHA-256"
    fallback = next((e for e in entries if e.name == PREFERRED_WEIGHTS), entries[0])
    return fallback, "not one of torchvision's files by name or content: assumed"


def _from_torchvision(entry, how: str) -> Preprocessing:
    t = entry.transforms()
    side = t.crop_size[0]
    spec = InputSpec(3, side, side, tuple(t.mean), tuple(t.std), "crop", t.resize_size[0], t.interpolation.value)
    top1 = entry.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return Preprocessing(spec, f"torchvision {type(entry).__name__}.{entry.name} ({how})", top1)


def _timm_tag(name: str, path: Path) -> tuple[str, str]:
    """The timm tag of network ``name`` the file is (its hub folder names it: models--timm--<tag>), and how it was
    told; else the network's default tag."""
    tags = [tag for tag, row in TIMM_EVAL.items() if row[0] == name]
    named = [tag for tag in tags if tag in str(path)]
    if named:
        return max(named, key=len), "named in the file's path"
    return tags[0], "timm's default tag: the path names none"


def _from_timm(name: str, path: Path) -> Preprocessing:
    tag, how = _timm_tag(name, path)
    _, side, crop_pct, crop_mode, interpolation, (mean, std) = TIMM_EVAL[tag]
    policy = "stretch" if crop_mode == "squash" else "crop"
    spec = InputSpec(3, side, side, mean, std, policy, math.floor(side / crop_pct), interpolation)
    return Preprocessing(spec, f"timm {tag}'s pretrained configuration ({how})")


def _is_timm_file(path: Path, load: LoadReport | None) -> bool:
    # timm's converters name their layout; timm's hub folders (models--timm--resnet50.a1_in1k) name timm
    return (load is not None and load.layout.startswith("timm")) or any("timm" in p.lower() for p in path.parts)


def published_preprocessing(name: str, path: str | Path, load: LoadReport | None = None) -> Preprocessing:
    """The preprocessing the publisher of the weight file ``path`` evaluated network ``name`` with (module doc)."""
    path = Path(path)
    entries = _torchvision_entries(name)
    timm_file = _is_timm_file(path, load)
    if any(row[0] == name for row in TIMM_EVAL.values()) and (timm_file or not entries):
        return _from_timm(name, path)
    if entries and not timm_file:
        return _from_torchvision(*_identify(entries, path))
    why = "a timm file: timm trained this network with several recipes" if entries else "no published contract known"
    return Preprocessing(photo_spec(model_info(name).input_size),
                         f"cnnzoo's photo contract ({why}; state the weights' own)", published=False)


def trained_input(name: str, path: str | Path, load: LoadReport) -> Preprocessing | None:
    """The input contract the weights in ``path`` (loaded into network ``name`` as ``load`` reports) were trained
    with, where it is known: a cnnzoo checkpoint's card, else its publisher's; None for anybody else's file."""
    if load.card is not None:
        return Preprocessing(load.card.input, f"the model card of {path}")
    published = published_preprocessing(name, path, load)
    return published if published.published else None


def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's 1000 class names in the class-index order every ImageNet classifier uses (torchvision's)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file, one per line in class-index order (blank lines and surrounding spaces ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read class names from {path}: {err}") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _class_names(given: tuple[str, ...] | None, count: int) -> tuple[tuple[str, ...], str]:
    if given is not None:
        if len(given) != count:
            raise UserError(f"{len(given)} class names given, the weights' classifier has {count} classes")
        return tuple(given), "named by the caller"
    if count == 1000:
        return imagenet_classes(), "ImageNet-1k"
    raise UserError(f"the weights' classifier has {count} classes, not ImageNet-1k's 1000: name them "
                    "(a text file of one class per line: --classes FILE)")


def _state(spec: InputSpec, stated: dict) -> InputSpec:
    """``spec`` with the stated fields: InputSpec's own, and input_size ((C,) H, W: the crop, with the resize keeping
    its ratio to it, as InputSpec.at_size does)."""
    stated = dict(stated)
    unknown = sorted(set(stated) - _SPEC_FIELDS - {"input_size"})
    if unknown:
        raise UserError(f"unknown preprocessing fields {unknown}; known: {sorted(_SPEC_FIELDS | {'input_size'})}")
    if "input_size" in stated:
        spec = spec.at_size(resolve_input_size(stated.pop("input_size"), spec.size))
    return replace(spec, **stated)


def import_weights(
    name: str,
    weights: str | Path,
    out: str | Path | None = None,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    preprocessing: dict | None = None,
) -> ImportReport:
    """Pack a torchvision or timm weight file into a cnnzoo checkpoint (module doc).

    Args:
        name: the registered network the file holds (its layout is checked tensor by tensor).
        weights: the ``.pth`` / ``.pt`` / ``.safetensors`` file (never unpickled: tensors only).
        out: the checkpoint to write (default: ``NAME.pt`` beside the weights); written atomically.
        classes: the class names in index order (default: ImageNet-1k's, for a 1000-class classifier).
        preprocessing: what replaces the published preprocessing: InputSpec fields (resize, resize_size,
            interpolation, mean, std), e.g. ``{"resize_size": 236, "interpolation": "bicubic"}``, and input_size
            (the crop, as (C, H, W), (H, W) or H; the resize keeps its ratio to it).

    Raises:
        UserError: an unknown network, an unreadable file or one whose tensors are not that network's, class names
            that do not match the classifier, an output that would overwrite the weights.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"no such weight file: {weights}")
    model = create_model(name)
    load = load_pretrained(model, weights)
    if load.source == "cnnzoo checkpoint":
        raise UserError(f"{weights} is already a cnnzoo checkpoint: use it as it is")
    out = Path(out) if out is not None else weights.with_name(f"{name}.pt")
    if out.resolve() == weights.resolve():
        raise UserError(f"{out} is the weight file itself: choose another output (--out)")
    count = load.num_classes
    names, classes_source = _class_names(tuple(classes) if classes is not None else None, count)
    published = published_preprocessing(name, weights, load)
    spec = _state(published.spec, preprocessing or {})
    if spec != published.spec:
        published = replace(published, source=f"{published.source}, with {sorted(preprocessing)} as stated",
                            top1=None)
    extra = {"pretrained": {"file": weights.name, "preprocessing": published.source, "top1": published.top1}}
    card = ModelCard(name, {"num_classes": count}, names, spec, extra=extra)
    save_checkpoint(out, card, model.state_dict(), epoch=0, step=0, best_metric=None, metrics={}, config={})
    return ImportReport(out, card, load, published, classes_source)
