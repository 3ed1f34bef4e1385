"""Predict the classes of image files with a checkpoint, an .onnx or an OpenVINO IR.

    results = cnnzoo.predict("runs/lenet5/best.pt", ["digit.png", "more_digits/"], topk=3)
    for r in results:
        print(r.path, r.topk if r.ok else r.error)

Several models (the same classes) are an ensemble: their class probabilities are averaged, each model fitting
an image by its own card; ``tta`` averages views of each image as well (cnnzoo.ensemble). Files that are not
images (or are truncated, too large, in a format outside the allowlist) are reported by name in their result's
``error``; every other file is still predicted. Torch is imported only for a .pt checkpoint.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnnzoo.ensemble import check_members, mean_probabilities, tta_views
from cnnzoo.errors import UserError
from cnnzoo.images import ImageError, image_files, open_image
from cnnzoo.runtime import Runtime, open_runtime, softmax, top_classes

__all__ = ["Prediction", "predict", "probabilities", "expand_sources", "write_csv"]

BATCH_SIZE = 16  # images decoded and run together: bounds memory on large folders, amortises the runtime call


@dataclass
class Prediction:
    """The result for one file: its top-k (class name, probability), or the reason it could not be read."""

    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if not self.ok:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "topk": [{"class": name, "probability": prob} for name, prob in self.topk]}

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.path}: error: {self.error}"
        return f"{self.path}: " + ", ".join(f"{name} ({prob:.1%})" for name, prob in self.topk)


def expand_sources(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """Image files named directly, plus the image files under each named folder (cnnzoo.images.image_files).

    A file named directly is always kept, whatever its extension (so that a text file named .jpg is reported,
    not skipped); in folders, hidden entries and files whose extension is no image format's are skipped.

    Raises:
        UserError: a source that does not exist, or a folder holding no image file.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            found = image_files(source)
            if not found:
                raise UserError(f"{source}: no image files in this folder")
            paths.extend(found)
        elif source.exists():
            paths.append(source)
        else:
            raise UserError(f"no such file or folder: {source}")
    return paths


def predict(
    model: str | Path | Runtime | Sequence[str | Path | Runtime],
    sources: str | Path | Iterable[str | Path],
    topk: int = 5,
    backend: str = "auto",
    batch_size: int = BATCH_SIZE,
    precision: str = "auto",
    trust_torchscript: bool = False,
    tta: str = "none",
) -> list[Prediction]:
    """Top-k classes of each image, with the model's own preprocessing.

    Args:
        model: a cnnzoo checkpoint (.pt), an .onnx or an OpenVINO .xml, or a Runtime already opened; or a list of
            them (the same classes): an ensemble averaging their probabilities.
        sources: image files and folders of images (see expand_sources).
        topk: how many classes to return per image (at most the number of classes).
        backend: "auto", "torch", "onnxruntime" or "openvino" (see cnnzoo.runtime.open_runtime).
        batch_size: images run through the model together.
        precision: "auto" (the export's recorded choice, else the file's own), "fp32", "bf16" or "int8" (see
            cnnzoo.precision).
        trust_torchscript: accept a TorchScript file, a program that runs code when loaded (see open_runtime).
        tta: test-time augmentation, one of cnnzoo.ensemble.TTA_MODES ("none": the plain prediction).

    Returns:
        One Prediction per image file, in order; those that could not be read carry ``error`` instead of ``topk``.
    """
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    paths = expand_sources(sources)
    tta_views(np.zeros((1, 1, 2, 2), np.float32), tta)  # an unknown mode fails before any model is opened
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    runtimes = [m if isinstance(m, Runtime) else open_runtime(m, backend, precision=precision,
                                                              trust_torchscript=trust_torchscript)
                for m in models]
    check_members([r.card for r in runtimes], [r.path for r in runtimes])
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        results.extend(_predict_batch(runtimes, paths[start : start + batch_size], topk, tta))
    return results


def probabilities(runtimes: Sequence[Runtime], images: Sequence[Image.Image], tta: str = "none") -> np.ndarray:
    """N x K class probabilities of PIL images: each model's softmax over the TTA views of its own preprocessing,
    averaged over views, then over models. One model without TTA gives Runtime.predict's probabilities exactly."""
    per_model = []
    for runtime in runtimes:
        batch = np.stack([runtime.preprocess(image) for image in images])
        per_model.append(mean_probabilities([softmax(runtime.logits(view)) for view in tta_views(batch, tta)]))
    return mean_probabilities(per_model)


def _predict_batch(runtimes: Sequence[Runtime], paths: Sequence[Path], topk: int, tta: str) -> list[Prediction]:
    results = [Prediction(str(path)) for path in paths]
    images, good = [], []
    channels = max(r.input_size[0] for r in runtimes)  # each model's preprocessing converts to its own channels
    for result, path in zip(results, paths):
        try:
            images.append(open_image(path, channels=channels))
            good.append(result)
        except ImageError as err:
            result.error = str(err)
    if images:
        for result, top in zip(good, top_classes(probabilities(runtimes, images, tta), runtimes[0].classes, topk)):
            result.topk = top
    return results


def write_csv(results: Sequence[Prediction], path: str | Path) -> Path:
    """One row per image: path, then class_1, probability_1, ... class_k, probability_k, then error (empty when
    the image was read)."""
    k = max((len(r.topk) for r in results), default=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # as every other output file of cnnzoo
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")), "error"])
        for r in results:
            cells = [v for name, prob in r.topk for v in (name, f"{prob:.6f}")]
            writer.writerow([r.path, *cells, *[""] * (2 * k - len(cells)), r.error or ""])
    return path
