"""The model registry: every network registers its builder here, by the builder's own name.

The CLI, the README table and the tests enumerate this registry; no other list of model names exists.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnzoo.errors import InputSizeError, UserError

__all__ = ["Paper", "ModelInfo", "register_model", "list_models", "create_model", "model_info", "UnknownModelError",
           "check_input_size"]


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    arxiv: str = ""  # arXiv id where the paper has one

    def __str__(self) -> str:
        ref = f", arXiv:{self.arxiv}" if self.arxiv else ""
        return f"{self.authors} ({self.year}). {self.title}{ref}"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    paper: Paper
    input_size: tuple[int, int, int]  # default (C, H, W); C is also the default in_chans
    num_classes: int  # default number of classes
    description: str  # first line of the builder's docstring
    small_input: bool  # accepts small_input=True (stride-1 stem for 32x32 images)

    @property
    def year(self) -> int:
        return self.paper.year


class UnknownModelError(UserError):
    """Raised for a model name that is not registered; the message names the closest registered names."""


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(
    family: str,
    paper: Paper,
    input_size: tuple[int, int, int] = (3, 224, 224),
    num_classes: int = 1000,
    small_input: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name. Family modules bind the first two arguments once:

    ``register = partial(register_model, "ResNet", RESNET)`` then ``@register()`` above each builder.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"duplicate model name {name!r}")
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"model builder {name!r} needs a one-line docstring")
        _MODELS[name] = fn
        _INFO[name] = ModelInfo(name, family, paper, tuple(input_size), num_classes, doc.splitlines()[0], small_input)
        return fn

    return decorator


def _ensure_loaded() -> None:
    # Importing the package of family modules runs every @register_model.
    from cnnzoo import models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a glob pattern."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def _lookup(name: str) -> str:
    _ensure_loaded()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cnnzoo models` lists them"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return name


def model_info(name: str) -> ModelInfo:
    """Family, paper, default input size and a one-line description of a registered model."""
    return _INFO[_lookup(name)]


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs) -> nn.Module:
    """Build a registered network. Arguments that are None keep the network's own default (timm's rule),
    so CLI flags defaulting to None never override a model's defaults."""
    builder = _MODELS[_lookup(name)]
    kwargs = {k: v for k, v in dict(kwargs, num_classes=num_classes, in_chans=in_chans).items() if v is not None}
    if kwargs.get("small_input") and not _INFO[name].small_input:
        raise UserError(f"{name} does not support small_input=True")
    if kwargs.get("small_input") is False:
        kwargs.pop("small_input")
    model = builder(**kwargs)
    # How it was built, so that fit can write a checkpoint that rebuilds it (nanoGPT's model_args).
    model.cnnzoo_spec = {"model_name": name, "model_kwargs": kwargs}
    return model


def check_input_size(name: str, input_size: tuple[int, int, int], *, train: bool = False, **kwargs) -> None:
    """Refuse, with one line, an input (C, H, W) the network cannot take: found on the meta device, so it costs no
    weights and no arithmetic, before any run folder or export file is made. ``train`` also checks training mode
    (auxiliary heads can need a larger input)."""
    import torch

    with torch.device("meta"):
        model = create_model(name, **kwargs)
    x = torch.zeros(2, *input_size, device="meta")
    for mode in (False, True) if train else (False,):
        try:
            model.train(mode)(x)
        except (RuntimeError, ValueError, IndexError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            size = "x".join(map(str, input_size))
            raise InputSizeError(f"{name} cannot take a {size} input{' in training' if mode else ''}: {reason}") \
                from None
