"""Predict the classes of image files with a checkpoint, an .onnx or an OpenVINO IR.

    results = cnnzoo.predict("runs/lenet5/best.pt", ["digit.png", "more_digits/"], topk=3)
    for r in results:
        print(r.path, r.topk if r.ok else r.error)

Files that are not images (or are truncated, too large, in a format outside the allowlist) are reported by name
in their result's ``error``; every other file is still predicted. Torch is imported only for a .pt checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnnzoo.errors import UserError
from cnnzoo.images import ImageError, image_files, open_image
from cnnzoo.runtime import Runtime, open_runtime

__all__ = ["Prediction", "predict", "expand_sources"]

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
    model: str | Path | Runtime,
    sources: str | Path | Iterable[str | Path],
    topk: int = 5,
    backend: str = "auto",
    batch_size: int = BATCH_SIZE,
    precision: str = "auto",
    trust_torchscript: bool = False,
) -> list[Prediction]:
    """Top-k classes of each image, with the model's own preprocessing.

    Args:
        model: a cnnzoo checkpoint (.pt), an .onnx or an OpenVINO .xml, or a Runtime already opened.
        sources: image files and folders of images (see expand_sources).
        topk: how many classes to return per image (at most the number of classes).
        backend: "auto", "torch", "onnxruntime" or "openvino" (see cnnzoo.runtime.open_runtime).
        batch_size: images run through the model together.
        precision: "auto" (the export's recorded choice, else the file's own), "fp32", "bf16" or "int8" (see
            cnnzoo.precision).
        trust_torchscript: accept a TorchScript file, a program that runs code when loaded (see open_runtime).

    Returns:
        One Prediction per image file, in order; those that could not be read carry ``error`` instead of ``topk``.
    """
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    paths = expand_sources(sources)
    runtime = model if isinstance(model, Runtime) else open_runtime(model, backend, precision=precision,
                                                                         trust_torchscript=trust_torchscript)
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        results.extend(_predict_batch(runtime, paths[start : start + batch_size], topk))
    return results


def _predict_batch(runtime: Runtime, paths: Sequence[Path], topk: int) -> list[Prediction]:
    results = [Prediction(str(path)) for path in paths]
    images, good = [], []
    for result, path in zip(results, paths):
        try:
            images.append(open_image(path, channels=runtime.input_size[0]))
            good.append(result)
        except ImageError as err:
            result.error = str(err)
    for result, top in zip(good, runtime.predict(images, topk=topk)):
        result.topk = top
    return results
