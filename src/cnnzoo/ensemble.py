"""Ensembles of checkpoints and test-time augmentation (TTA), torch-free: what `cnnzoo evaluate` (the training
side) and `cnnzoo predict` (the inference side) share.

An ensemble averages the class probabilities of its members (softmax of each member's logits, equal weights),
each member preprocessing an image by its own card (cnnzoo.images.preprocess); members must predict the same
classes in the same order. TTA averages the probabilities of a few views of the preprocessed batch:

    none        the batch itself (the plain prediction, bit for bit)
    flip        the batch and its mirror image
    crops       five crops: the batch itself and the four corner crops of the batch padded by 1/16 of its shorter
                side (reflected, so no black border appears): each image shifted diagonally by that much, the
                shifts pad-crop training shows the network
    flip-crops  the ten views of both

Mirror views suit photos; they hurt handwriting (a mirrored 2 is no digit), whose networks never saw one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cnnzoo.artifact import ModelCard
from cnnzoo.errors import UserError

__all__ = ["TTA_MODES", "tta_views", "mean_probabilities", "check_members"]

CROP_SHIFT = 1 / 16  # of the shorter side: how far the corner crops are shifted


def _crops(batch: np.ndarray) -> list[np.ndarray]:
    h, w = batch.shape[-2:]
    p = max(1, round(min(h, w) * CROP_SHIFT))
    padded = np.pad(batch, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    corners = [padded[..., dy:dy + h, dx:dx + w] for dy in (0, 2 * p) for dx in (0, 2 * p)]
    return [batch, *(np.ascontiguousarray(c) for c in corners)]


def _flip(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch[..., ::-1])


_VIEWS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    "none": lambda batch: [batch],
    "flip": lambda batch: [batch, _flip(batch)],
    "crops": _crops,
    "flip-crops": lambda batch: _crops(batch) + _crops(_flip(batch)),
}
TTA_MODES = tuple(_VIEWS)


def tta_views(batch: np.ndarray, mode: str = "none") -> list[np.ndarray]:
    """The views of a preprocessed N x C x H x W batch whose probabilities TTA averages (see the module)."""
    if mode not in _VIEWS:
        raise UserError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")
    return _VIEWS[mode](batch)


def mean_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The average of several N x K probability arrays (views or members), in float64. One array comes back
    as it is, so an ensemble of one without TTA is the plain prediction exactly."""
    if len(probabilities) == 1:
        return probabilities[0]
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in probabilities]), axis=0)


def check_members(cards: Sequence[ModelCard], names: Sequence[str]) -> None:
    """Refuse an ensemble whose members predict different classes (or the same in another order): averaging
    their probabilities would mix up classes."""
    first = cards[0]
    for card, name in zip(cards[1:], names[1:]):
        if tuple(card.classes) != tuple(first.classes):
            diff = sorted(set(card.classes) ^ set(first.classes))[:5]
            detail = f"differ: {', '.join(diff)}" if diff else "same names, another order"
            raise UserError(f"{name} predicts other classes than {names[0]} ({detail}); an ensemble needs the "
                            "same classes")
