"""The classic baseline: an RBF-kernel SVM (scikit-learn's SVC) on raw pixels, or on the pooled feature map of a
trained CNN (``features=CKPT``), on exactly the train/val split the CNN uses.

C is chosen by 3-fold cross-validation on the training split among 1, 10, 100 (gamma="scale"), so the CNN is
compared with a tuned SVM, not with a default one; the validation split is touched once, for the score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnzoo.artifact import InputSpec
from cnnzoo.checkpoint import build_model, load_checkpoint
from cnnzoo.data import Data

__all__ = ["BaselineResult", "svm_baseline", "C_GRID"]

C_GRID = (1.0, 10.0, 100.0)


@dataclass
class BaselineResult:
    accuracy: float  # micro top-1 on the validation split
    C: float  # the cross-validated regularisation constant
    features: str  # "pixels" or the checkpoint path
    dims: int  # feature dimension
    train_images: int
    val_images: int
    seconds: float

    def __str__(self) -> str:
        return (f"RBF SVM on {self.features} ({self.dims} dims, C={self.C:g}): top-1 {self.accuracy:.4f} on "
                f"{self.val_images} images (trained on {self.train_images}, {self.seconds:.1f} s)")


@torch.inference_mode()
def _arrays(data: Data, split: str, model: torch.nn.Module | None, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    loader = data.loader(split, 256, train=False, spec=spec)
    xs, ys = [], []
    for x, y, _ in loader:
        if model is not None:
            x = model.forward_features(x).mean((2, 3))  # global average pool of the last feature map
        xs.append(x.flatten(1).float().numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def svm_baseline(data: Data, features: str | Path | None = None, seed: int = 0) -> BaselineResult:
    """Train the SVM on data.train and score it on data.val (pixels normalised as the CNN sees them)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model, spec = None, data.spec
    if features is not None:
        ckpt = load_checkpoint(features)
        data.check_classes(list(ckpt.card.classes))
        model, spec = build_model(ckpt), ckpt.card.input  # the features of the images as the CNN sees them
    t0 = time.perf_counter()
    x_train, y_train = _arrays(data, "train", model, spec)
    x_val, y_val = _arrays(data, "val", model, spec)
    # Pixels keep their scale (the RBF kernel on normalised pixels is the textbook baseline); CNN features are
    # standardised, since their channels live on unrelated scales.
    svc = SVC(kernel="rbf", gamma="scale")
    pipe = make_pipeline(StandardScaler(), svc) if model is not None else svc
    key = "svc__C" if model is not None else "C"
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    search = GridSearchCV(pipe, {key: list(C_GRID)}, cv=folds).fit(x_train, y_train)
    accuracy = float((search.predict(x_val) == y_val).mean())
    return BaselineResult(accuracy, search.best_params_[key], str(features) if features else "pixels",
                          x_train.shape[1], len(y_train), len(y_val), time.perf_counter() - t0)
