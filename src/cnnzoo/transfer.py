"""Transfer learning: start from saved weights, choose what to train.

``load_pretrained`` reads a cnnzoo checkpoint or a torchvision-/timm-format state_dict (``.pth``/``.pt`` through
``torch.load(weights_only=True)``, ``.safetensors`` through safetensors), so nothing but tensors is ever unpickled.
It strips the ``module.`` prefix of DistributedDataParallel (and ``_orig_mod.`` of torch.compile), initialises or
drops auxiliary heads (the model's ``aux_classifiers``: GoogLeNet's ``aux1``/``aux2``, Inception-v3's ``AuxLogits``,
NASNet's ``aux_head``) that only one side has, leaves
the classifier freshly initialised when the file has another number of classes. A file in another code base's
layout (timm's VGG, ConvNeXt, RegNet, ResNetV2, EfficientNet builder) goes through its named converter in
``cnnzoo.layouts``, and only into the networks that layout describes exactly; tensors are never matched by order
alone (two architectures can hold the same shapes in the same order).

``apply_finetune`` freezes by the model contract alone (``model.stages()``, ``model.get_classifier()``):

    all      every parameter trains
    last:N   the last N stages, everything registered after them, and the classifier train
    head     only the classifier trains; with new_fc_classes the old classifier is kept (frozen) and a new
             Linear(old_classes, new_fc_classes) appended on top of it is the only trained layer

``freeze_norm_stats`` puts frozen norm layers into eval mode; the trainer calls it after every ``model.train()``
so that frozen batch-norm running statistics never change (a common fine-tuning bug: requires_grad=False alone
still lets BN update its running mean and variance in training mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnzoo.artifact import ModelCard
from cnnzoo.checkpoint import FORMAT as CHECKPOINT_FORMAT
from cnnzoo.checkpoint import card_of, read_weights
from cnnzoo.errors import UserError
from cnnzoo.layouts import accepted, accepting, convert, recognise, refusal
from cnnzoo.models.base import ZooModel

__all__ = ["LoadReport", "load_pretrained", "apply_finetune", "freeze_norm_stats"]

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")  # dicts that training scripts wrap weights in
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
SHOW = 3  # differing keys named in an error message


@dataclass
class LoadReport:
    """What load_pretrained did; ``str(report)`` is one line for the trainer to print."""

    path: str
    source: str  # "cnnzoo checkpoint", "state_dict" or "safetensors"
    loaded: int  # tensors copied into the model
    stripped_prefix: str = ""
    layout: str = ""  # the foreign layout the file was converted from
    file_classes: int | None = None  # classes of the file's classifier
    num_classes: int | None = None  # classes of the model's classifier after loading
    classifier_replaced: bool = False
    appended_fc: int | None = None  # the checkpoint's appended classifier, rebuilt on the model
    aux_initialised: list[str] = field(default_factory=list)
    aux_dropped: list[str] = field(default_factory=list)
    input_channels: tuple[int, int] | None = None  # (file's, model's) when the first convolution was adapted
    card: ModelCard | None = None  # a cnnzoo checkpoint's: its classes and the input contract it was trained with

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path} ({self.source})"]
        if self.stripped_prefix:
            parts.append(f"stripped prefix {self.stripped_prefix!r}")
        if self.layout:
            parts.append(f"converted from the {self.layout} layout")
        if self.appended_fc is not None:
            parts.append(f"rebuilt the appended classifier ({self.appended_fc} classes)")
        if self.input_channels:
            was, now = self.input_channels
            how = "its filters summed" if now == 1 else "its filters repeated and rescaled"
            parts.append(f"first convolution adapted from {was} to {now} input channels ({how}, as timm does)")
        if self.classifier_replaced:
            parts.append(f"classifier replaced: {self.file_classes} -> {self.num_classes} classes, newly initialised")
        if self.aux_initialised:
            parts.append(f"auxiliary heads not in the file, newly initialised: {', '.join(self.aux_initialised)}")
        if self.aux_dropped:
            parts.append(f"auxiliary heads dropped from the file: {', '.join(self.aux_dropped)}")
        return "; ".join(parts)


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], str, ModelCard | None]:
    """The file's tensors, its kind, and a cnnzoo checkpoint's model card (None for plain state_dicts)."""
    if not path.is_file():
        raise UserError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors", None
        except Exception as err:  # a truncated or foreign file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot read weights from {path}: {reason[:200]}") from None
    obj = read_weights(path)  # CRCs, weights_only, the recorded digest: the one reader of weight files
    card = None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        card, obj, kind = card_of(obj, path), obj.get("state_dict"), "cnnzoo checkpoint"
    else:
        kind = "state_dict"
        for key in WRAPPER_KEYS:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state_dict (a dict of tensors, or a cnnzoo checkpoint)")
    return dict(obj), kind, card


def _strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    stripped = ""
    while prefix := next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None):  # any nesting
        state = {k[len(prefix) :]: v for k, v in state.items()}
        stripped += prefix
    return state, stripped


def _aux_in_file(model: ZooModel, keys) -> list[str]:
    """The model's possible auxiliary heads (its contract's ``aux_classifiers``) that the file holds."""
    return sorted({k.split(".")[0] for k in keys if k.split(".")[0] in model.aux_classifiers})


def _is_counter(key: str) -> bool:
    # BatchNorm's num_batches_tracked: absent from older files and irrelevant to eval, so never required.
    return key.endswith("num_batches_tracked")


def _class_heads(model: nn.Module) -> set[str]:
    """Parameter names of the classifier and of the auxiliary heads' class layers: the tensors whose class count
    may differ from the file's."""
    paths = [model.classifier_path] + [model.aux_classifiers[head] for head in model.aux_heads()]
    return {f"{path}.{p}" for path in paths for p in ("weight", "bias")}


def _match(model: nn.Module, ours: dict, theirs: dict, path: Path) -> list[str]:
    """The model's keys to load, each held by the file under the same name. Shapes may differ only in the class
    count of the classifier and auxiliary classifiers; any other difference is an error naming the first ones."""
    heads = _class_heads(model)
    own = [k for k in ours if not _is_counter(k)]
    other = [k for k in theirs if not _is_counter(k)]
    if set(own) != set(other):
        missing = ", ".join([f"{k} {tuple(ours[k].shape)}" for k in own if k not in theirs][:SHOW]) or "nothing"
        unexpected = ", ".join([f"{k} {tuple(theirs[k].shape)}" for k in other if k not in ours][:SHOW]) or "nothing"
        raise UserError(f"{path} does not fit this model: missing {missing}; unexpected {unexpected}"
                        f" ({len(own)} tensors in the model, {len(other)} in the file)")
    keys = own + [k for k in ours if _is_counter(k) and k in theirs]
    bad = [k for k in keys
           if ours[k].shape != theirs[k].shape and (k not in heads or ours[k].shape[1:] != theirs[k].shape[1:])]
    if bad:
        diff = ", ".join(f"{k} {tuple(ours[k].shape)} vs file {tuple(theirs[k].shape)}" for k in bad[:SHOW])
        raise UserError(f"{path} does not fit this model: shapes differ at {diff}")
    return keys


def _adapt_input_channels(model: nn.Module, theirs: dict) -> tuple[dict, tuple[int, int] | None]:
    """A file trained on other input channels than the model's (RGB weights for grey digits): the first
    convolution's filters are summed over their channels for a one-channel model (a grey image then gets what the
    RGB network gives it as three equal channels), else repeated to the model's channel count and rescaled by file /
    model channels (timm's adapt_input_conv). Only the first convolution: every other tensor must fit."""
    key, own = next(((k, v) for k, v in model.state_dict().items() if v.dim() == 4), (None, None))
    weight = theirs.get(key) if key else None
    if weight is None or weight.dim() != 4 or weight.shape[1] == own.shape[1] or \
            (weight.shape[0], *weight.shape[2:]) != (own.shape[0], *own.shape[2:]):
        return theirs, None
    was, now = weight.shape[1], own.shape[1]
    if now == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        adapted = weight.repeat(1, -(-now // was), 1, 1)[:, :now] * (was / now)
    return {**theirs, key: adapted.to(weight.dtype)}, (was, now)


def _own_renames(model: nn.Module, theirs: dict) -> dict:
    """The file's keys after the renames the model's modules apply on load (torchvision's older key names)."""
    state = dict(theirs)
    for name, module in model.named_modules():
        if rename := getattr(module, "rename_state_keys", None):
            rename(state, f"{name}." if name else "")
    return state


def _from_layout(model: nn.Module, theirs: dict, path: Path) -> tuple[dict, str]:
    """The file's tensors under the model's names when they are written in a known foreign layout that describes
    this network; the tensors unchanged when they are not in a known layout (the name check then reports)."""
    state = model.state_dict()
    if {k for k in state if not _is_counter(k)} <= set(theirs):
        return theirs, ""
    layout = recognise(theirs)
    if layout is None:
        return theirs, ""
    name = getattr(model, "cnnzoo_spec", {}).get("model_name", type(model).__name__)
    if why := refusal(layout, name, str(path)):
        raise UserError(f"{path} is a {layout.name} file that cannot load into {name}: {why}")
    file_eps = accepted(layout, name)
    if file_eps is None:
        known = accepting(layout)
        raise UserError(f"{path} is a {layout.name} file; cnnzoo converts it for "
                        + (f"the networks matching {known!r}" if known else "no network") + f", not {name}")
    shapes = {k: v.shape for k, v in state.items()}
    bn_eps = {key: m.eps for key, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return convert(layout, theirs, shapes, bn_eps, file_eps), layout.name


def load_pretrained(model: ZooModel, path: str | Path, *, num_classes: int | None = None) -> LoadReport:
    """Load weights from a local file into ``model`` in place.

    Args:
        model: the network to initialise, e.g. ``create_model(name)`` of the file's architecture.
        path: a cnnzoo checkpoint, or a torchvision/timm state_dict in ``.pth``/``.pt``/``.safetensors``.
        num_classes: classes of the classifier after loading. When it differs from the file's, the classifier
            (with any auxiliary classifiers) is replaced by a newly initialised one (``reset_classifier``).
            None keeps the file's classifier, resizing the model's to it if needed: what
            ``apply_finetune(..., new_fc_classes=...)`` builds on (the old classifier stays, a new one goes on top).

    Raises:
        UserError: unreadable file, or any mismatch other than the class count, naming the first differing keys.
    """
    path = Path(path)
    theirs, kind, card = _read_tensors(path)
    theirs, stripped = _strip_prefixes(theirs)
    theirs, layout = _from_layout(model, _own_renames(model, theirs), path)
    theirs, input_channels = _adapt_input_channels(model, theirs)
    report = LoadReport(str(path), kind, 0, stripped_prefix=stripped, layout=layout, input_channels=input_channels,
                        card=card)
    appended = card.appended_classes if card else None
    if appended is not None and model.appended_classes is None:
        # The checkpoint's classifier is old Linear + appended Linear: give the model that shape before loading.
        old_key = f"{model.classifier_path}.0.weight"
        if old_key not in theirs:
            raise UserError(f"{path} says it appended a {appended}-class classifier but has no {old_key}")
        model.reset_classifier(theirs[old_key].shape[0])
        model.append_classifier(appended)
        report.appended_fc = appended
    model_aux, file_aux = model.aux_heads(), _aux_in_file(model, theirs)
    if file_aux and not model_aux:
        theirs = {k: v for k, v in theirs.items() if k.split(".")[0] not in file_aux}
        report.aux_dropped = file_aux
    report.aux_initialised = model_aux if not file_aux else []

    def match() -> tuple[dict, list[str]]:
        ours = {k: v for k, v in model.state_dict().items() if k.split(".")[0] not in report.aux_initialised}
        return ours, _match(model, ours, theirs, path)

    clf_key = f"{model.classifier_path}.weight"
    ours, keys = match()
    report.file_classes = theirs[clf_key].shape[0] if clf_key in keys else None
    if num_classes is None and report.file_classes not in (None, model.num_classes):
        model.reset_classifier(report.file_classes)  # keep the file's classifier: give the model its class count
        ours, keys = match()
    same = [k for k in keys if ours[k].shape == theirs[k].shape]
    # strict=False only for what the checks above leave out on purpose: class heads of another class count,
    # auxiliary heads the file lacks, missing BN counters. Every other key was matched and shape-checked.
    model.load_state_dict({k: theirs[k] for k in same}, strict=False)
    report.loaded = len(same)
    other_count = {k.rpartition(".")[0] for k in keys if ours[k].shape != theirs[k].shape}
    for name, module in model.named_modules():
        if name in other_count and name != model.classifier_path:
            module.reset_parameters()  # auxiliary classifiers of the file's class count: fresh, like the main one
    target = model.num_classes if num_classes is None else num_classes
    if model.classifier_path in other_count or target != model.num_classes:
        model.reset_classifier(target)
        report.classifier_replaced = True
    report.num_classes = model.num_classes
    return report


def _parse_mode(mode: str, num_stages: int) -> int | None:
    """Stages left trainable: None for all, 0 for head, N for last:N."""
    if mode == "all":
        return None
    if mode == "head":
        return 0
    head, _, count = mode.partition(":")
    if head == "last" and count.isdigit() and 1 <= int(count) <= num_stages:
        return int(count)
    raise UserError(f"unknown fine-tuning mode {mode!r}: use all, head, or last:N with 1 <= N <= {num_stages}")


def apply_finetune(model: ZooModel, mode: str = "all", *, new_fc_classes: int | None = None) -> ZooModel:
    """Set ``requires_grad`` for a fine-tuning mode (``all``, ``last:N``, ``head``) and return the model.

    ``last:N`` trains the last N of ``model.stages()``, every parameter registered after the first of them (such
    as a final norm or head convolution outside the stages) and the classifier; earlier parameters freeze.
    With ``new_fc_classes`` the current classifier is kept and a new linear layer appended on top
    (``model.append_classifier``); in ``head`` mode only that new layer trains."""
    stages = model.stages()
    keep = _parse_mode(mode, len(stages))
    if new_fc_classes is not None:
        model.append_classifier(new_fc_classes)
    for p in model.parameters():
        p.requires_grad_(keep is None)
    if keep:
        order = {id(p): i for i, p in enumerate(model.parameters())}
        trained = [order[id(p)] for _, stage in stages[-keep:] for p in stage.parameters()]
        start = min(trained, default=len(order))
        for p in model.parameters():
            p.requires_grad_(order[id(p)] >= start)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)
    freeze_norm_stats(model)
    return model


def freeze_norm_stats(model: nn.Module) -> None:
    """Put every norm layer whose parameters are all frozen into eval mode, so its running statistics stay.

    A norm layer without parameters (``affine=False``) follows the nearest enclosing module that has some."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, NORM_TYPES):
            continue
        owner = module
        while not any(True for _ in owner.parameters()) and name:
            name = name.rpartition(".")[0]
            owner = modules[name]
        params = list(owner.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
