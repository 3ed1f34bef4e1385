"""The model artifact: one typed, torch-free record of what a network is and what input it expects.

    InputSpec   the input contract: channels, height, width, mean, std, and how an arbitrary image is mapped
                onto H x W (the resize policy and its interpolation)
    ModelCard   model name and constructor arguments, class names, the InputSpec, and the classifier surgery
                done after construction (an appended classifier)

Training writes the card once (cnnzoo.data chooses the InputSpec that reproduces each dataset's evaluation
transform on an image file of the dataset's own kind); every reader (evaluate, predict, explain, export, the
runtimes, serve, the SVM baseline on features) reads it through ``ModelCard.from_dict`` and preprocesses with
``cnnzoo.images.preprocess(image, card.input)``. The same dict travels in checkpoints, in the ONNX metadata, in
the OpenVINO rt_info and in the TorchScript extra file, so the same image gives the same tensor on every path.

Resize policies (``InputSpec.resize``), with the interpolation of ``InputSpec.interpolation``:

    crop     the shorter side to resize_size, then the centre H x W (torchvision's evaluation preset for photos;
             zero-padded where the image is smaller)
    pad      the longer side to resize_size, then centred on an H x W black canvas (MNIST: 28 x 28 digits zero-padded
             to 32 x 32, as LeCun et al. fed LeNet-5)
    stretch  straight to H x W, aspect ratio not kept (resize_size unused): images of a fixed native size such as
             the 8 x 8 scikit-learn digits or CIFAR's 32 x 32
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from cnnzoo.errors import UserError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CROP_FRACTION", "RESIZE_MODES", "INTERPOLATIONS", "ArtifactError",
           "InputSpec", "ModelCard", "parse_input_size", "resolve_input_size", "photo_spec", "is_torchscript",
           "CHECKPOINT_SUFFIXES", "EXPORTED_FILES"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.5,), (0.5,)  # grey photos: no ImageNet statistics exist
CROP_FRACTION = 0.875  # photos: the shorter side to H / 0.875 (224 -> 256), then the centre H x W
RESIZE_MODES = ("crop", "pad", "stretch")
MAX_SIDE = 4096  # pixels: far above any network's input here (NASNet-A Large: 331), far below what would exhaust memory
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


class ArtifactError(UserError):
    """Model metadata that is missing, malformed or inconsistent (a checkpoint's or an exported file's)."""


@dataclass(frozen=True)
class InputSpec:
    """What the network takes (C x H x W, normalised by mean and std) and how any image is brought to it."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "crop"  # a RESIZE_MODES policy
    resize_size: int = 0  # crop: the shorter side's length, pad: the longer side's; 0 means min(H, W)
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.resize_size:
            object.__setattr__(self, "resize_size", min(self.height, self.width))
        problems = [
            (self.channels not in (1, 3), f"channels must be 1 or 3, not {self.channels}"),
            (min(self.height, self.width, self.resize_size) < 1, f"sizes must be positive: {self.describe()}"),
            (max(self.height, self.width) > MAX_SIDE, f"sides above {MAX_SIDE} pixels are not supported"),
            (len(self.mean) != self.channels or len(self.std) != self.channels,
             f"mean and std need {self.channels} values each: {list(self.mean)}, {list(self.std)}"),
            (not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std, default=1) <= 0,
             f"std must be positive and finite, mean finite: {list(self.mean)}, {list(self.std)}"),
            (self.resize not in RESIZE_MODES, f"unknown resize policy {self.resize!r}; one of {RESIZE_MODES}"),
            (self.interpolation not in INTERPOLATIONS,
             f"unknown interpolation {self.interpolation!r}; one of {INTERPOLATIONS}"),
        ]
        for failed, message in problems:
            if failed:
                raise ArtifactError(f"invalid input spec: {message}")

    @property
    def size(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def at_size(self, size: Sequence[int]) -> InputSpec:
        """The same contract at another (C, H, W): resize_size keeps its ratio to the crop (256/224 stays 8/7)."""
        channels, height, width = (int(v) for v in size)
        if channels != self.channels:
            raise ArtifactError(f"the model takes {self.channels}-channel input, not {channels}")
        scale = min(height, width) / min(self.height, self.width)
        return replace(self, height=height, width=width, resize_size=max(1, round(self.resize_size * scale)))

    def describe(self) -> str:
        how = self.resize if self.resize == "stretch" else f"{self.resize} {self.resize_size}"
        return f"{self.channels}x{self.height}x{self.width} ({how}, {self.interpolation})"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> InputSpec:
        return cls(int(d["channels"]), int(d["height"]), int(d["width"]), tuple(d["mean"]), tuple(d["std"]),
                   str(d.get("resize", "crop")), int(d.get("resize_size", 0)), str(d.get("interpolation", "bilinear")))


def photo_spec(size: Sequence[int]) -> InputSpec:
    """The contract of a network trained on photos: ImageNet statistics, shorter side to H / 0.875, centre crop."""
    channels, height, width = (int(v) for v in size)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)
    return InputSpec(channels, height, width, mean, std, "crop", round(min(height, width) / CROP_FRACTION))


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild a network and use it on image files, besides its weights."""

    model_name: str
    model_kwargs: dict
    classes: tuple[str, ...]
    input: InputSpec
    appended_classes: int | None = None  # fine-tuning kept the old classifier and appended one with this many
    extra: dict = field(default_factory=dict)  # free-form facts a reader may show (dataset, training recipe)

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if not self.classes:
            raise ArtifactError("a model card needs at least one class name")
        if len(set(self.classes)) != len(self.classes):
            raise ArtifactError("class names must be unique")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_input(self, spec: InputSpec) -> ModelCard:
        return replace(self, input=spec)

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, "model_kwargs": dict(self.model_kwargs), "classes": list(self.classes),
                "input": self.input.to_dict(), "appended_classes": self.appended_classes, "extra": dict(self.extra)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "model metadata") -> ModelCard:
        """Read a card; also the flat layout of version-1 checkpoints and exports (input_size, mean, std,
        resize_size, appended_fc). Raises ArtifactError naming ``source`` on anything missing or inconsistent."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{source}: the model metadata is not a JSON object / dict")
        try:
            spec = _legacy_spec(d) if "input" not in d and "input_size" in d else InputSpec.from_dict(d["input"])
            kwargs = d.get("model_kwargs") or {}
            if not isinstance(kwargs, Mapping):
                raise TypeError("model_kwargs is not a dict")
            appended = d.get("appended_classes", d.get("appended_fc"))
            return cls(str(d["model_name"]), dict(kwargs), tuple(d["classes"]), spec,
                       None if appended is None else int(appended), dict(d.get("extra") or {}))
        except KeyError as err:
            raise ArtifactError(f"{source}: the model metadata lacks {err.args[0]}") from None
        except ArtifactError as err:
            raise ArtifactError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"{source}: malformed model metadata ({err})") from None

    @classmethod
    def from_json(cls, text: str | None, source: str) -> ModelCard:
        if text is None:
            raise ArtifactError(f"{source} carries no cnnzoo metadata; export it with `cnnzoo export CKPT`, "
                                "which embeds the class names and preprocessing")
        try:
            return cls.from_dict(json.loads(text), source)
        except json.JSONDecodeError:
            raise ArtifactError(f"{source}: the cnnzoo metadata is not valid JSON") from None


# Model files by suffix, the one table every reader and writer tells them by. Checkpoints (a TorchScript export is
# a .pt too, told apart by is_torchscript) and the files `cnnzoo export` writes: (its format, what to call one).
# Not .bin: beside an OpenVINO IR's weights, it is Hugging Face's name for torch.save files (pytorch_model.bin).
CHECKPOINT_SUFFIXES = (".pt", ".pth")
EXPORTED_FILES = {".onnx": ("onnx", "an ONNX model"), ".xml": ("openvino", "an OpenVINO IR")}


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether a file is a TorchScript archive: a program that runs code when loaded, never opened as weights.
    Such an archive is a zip holding code/ and constants.pkl; a torch.save checkpoint holds data.pkl only."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _legacy_spec(d: Mapping) -> InputSpec:
    channels, height, width = (int(v) for v in d["input_size"])
    return InputSpec(channels, height, width, tuple(d["mean"]), tuple(d["std"]), "crop", int(d["resize_size"]))


def parse_input_size(value: str | Sequence[int]) -> tuple[int, ...]:
    """'3x224x224' (C x H x W), '224x224' (H x W) or '224' (H = W), or such a sequence, as a tuple of 3, 2 or 2
    positive ints; H and H x W leave the channels to the model (resolve_input_size)."""
    text = value if isinstance(value, str) else "x".join(map(str, value))
    try:
        size = tuple(int(p) for p in text.lower().replace(",", "x").replace(" ", "").split("x"))
    except ValueError:
        raise UserError(f"input size must look like 3x224x224, 224x224 or 224, not {text!r}") from None
    size = size * 2 if len(size) == 1 else size
    if len(size) not in (2, 3) or min(size) < 1:
        raise UserError(f"input size must be CxHxW, HxW or H with positive sizes, not {text!r}")
    if max(size[-2:]) > MAX_SIDE:
        raise UserError(f"input size {text}: sides above {MAX_SIDE} pixels are not supported")
    return size


def resolve_input_size(value: str | Sequence[int] | None, default: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from a parse_input_size value; H x W and H keep the channels of ``default`` (the model's)."""
    if value is None:
        return tuple(int(v) for v in default)  # type: ignore[return-value]
    size = parse_input_size(value)
    return (int(default[0]), *size) if len(size) == 2 else size  # type: ignore[return-value]
