"""Datasets for training and evaluation: digits, CIFAR-10/100, MNIST, Fashion-MNIST, ImageFolder and fake data.

Small datasets are held in memory as one uint8 tensor (N x C x h x w, at their native size) and augmented in
whole batches on the device, as airbench does: no per-image decoding, no worker processes. An ImageFolder tree of
small images of one size (scans, icons, CIFAR-like sets: every side 64 px or less) is decoded once and held the
same way; other trees go through a DataLoader with workers, decoded by cnnzoo.images (the loader predict and
serve use). Either way training augments with one of cnnzoo.augment's presets.

Every dataset records the InputSpec (cnnzoo.artifact) that reproduces its evaluation transform on an image file
of its own kind: the 8x8 scikit-learn digit stretched to the input size, the 28x28 MNIST digit padded to 32x32, the
32x32 CIFAR image as it is, a photo resized and centre-cropped; an ImageFolder of small square images of one size
is stretched like CIFAR (a centre crop would cut the strokes of an 8x8 scan), any other folder is cropped like
photos. The loaders bring images onto the network's input with cnnzoo.images.fit_images / preprocess under that
spec (or under a checkpoint's, when evaluating), so training-time validation, evaluate, predict, the exported
runtimes and the service see the same tensor for the same image.

Each dataset also proposes the augmentation its kind wants (``Data.aug_defaults``, the TrainConfig fields aug,
flip, crop_pad, crop_scale): no flip for handwriting (digits, MNIST, small grey scans), pad-crop for images of
64 px or less, a resized crop for photos, over (0.35, 1) of the area for sets under SMALL_PHOTO_SET images and
ImageNet's (0.08, 1) above.

Every random choice of the data pipeline (epoch order, crops, flips) is derived from (seed, epoch, batch or
sample index) rather than drawn from a running generator, so a run resumed in the middle of an epoch sees
exactly the batches the uninterrupted run would have seen, without replaying anything.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import math
import pickle
import shutil
import struct
import sys
import tarfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cnnzoo.augment import SMALL_SIDE, Augmentation, augment_images, image_transform
from cnnzoo.choices import DATASETS
from cnnzoo.artifact import InputSpec, ModelCard, photo_spec, resolve_input_size
from cnnzoo.errors import UserError
from cnnzoo.images import fit_image, fit_images, open_image, preprocess, scan_image_folder, skipped_warning
from cnnzoo.options import DATA_OPTIONS, SPLIT_OPTIONS, check

__all__ = ["DATASETS", "Data", "TensorSplit", "FolderSplit", "load_data", "load_data_for", "split_data", "mix_seed"]

FIT_CACHE_BYTES = 1 << 30  # in-memory images brought to the input size once when that costs less than this
FOLDER_CACHE_BYTES = 1 << 30  # an ImageFolder of small images of one size is held in memory up to this size
SMALL_PHOTO_SET = 5000  # training images: below this a resized crop takes (0.35, 1) of the area, not (0.08, 1)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (seed, epoch, batch, rank); neighbours give unrelated streams."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ----------------------------------------------------------------------------------------------- splits
@dataclass
class TensorSplit:
    """An in-memory split: uint8 images N x C x h x w at their native size, and int64 labels."""

    images: torch.Tensor  # uint8 N x C x h x w at the dataset's native size
    labels: torch.Tensor
    source: str  # names samples in reports: "digits[val]#12"
    names: list[str] | None = None  # the files the images came from (an ImageFolder held in memory)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"{self.source}#{index}"


@dataclass
class FolderSplit:
    """One split of an ImageFolder tree: (path, label) pairs of images that decoded."""

    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return self.samples[index][0]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


@dataclass
class Data:
    """A dataset ready for training: two splits, the class names and the preprocessing a checkpoint records."""

    name: str
    classes: list[str]
    spec: InputSpec  # what a network trained on this data takes, and how an image file of its kind is fitted
    train: TensorSplit | FolderSplit
    val: TensorSplit | FolderSplit
    options: dict = field(default_factory=dict)  # the load_data arguments, kept in config.json and checkpoints
    # The augmentation this kind of data wants: TrainConfig's aug, flip, crop_pad, crop_scale (cnnzoo.augment).
    aug_defaults: dict = field(default_factory=lambda: dict(aug="none", flip=False, crop_pad=0,
                                                            crop_scale=(0.08, 1.0)))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.spec.size

    def check_classes(self, classes: list[str], what: str = "the checkpoint") -> None:
        """Refuse a dataset whose class list differs from a checkpoint's (a silent mislabelling otherwise)."""
        if list(classes) != list(self.classes):
            diff = sorted(set(classes) ^ set(self.classes))[:5]
            detail = f" (differ: {', '.join(diff)})" if diff else " (same names, different order)"
            raise UserError(f"{self.name} has {len(self.classes)} classes, {what} has {len(classes)}{detail}")

    def default_augmentation(self) -> Augmentation:
        """The augmentation ``aug_defaults`` describes."""
        d = self.aug_defaults
        return Augmentation.build(d["aug"], d["aug"], flip=d["flip"], crop_pad=d["crop_pad"],
                                  crop_scale=d["crop_scale"])

    def loader(self, split: str, batch_size: int, *, train: bool, spec: InputSpec | None = None, seed: int = 0,
               device: str | torch.device = "cpu", rank: int = 0, world: int = 1, workers: int = 2,
               augment: Augmentation | None = None, balanced: bool = False) -> TensorLoader | FolderLoader:
        """Batches of one split for this process: shuffled and augmented when ``train``, else in order, sharded
        across ``world`` processes (evaluation shards are disjoint and cover the split exactly once). Images are
        brought onto ``spec`` (default: this dataset's; evaluation passes the checkpoint's). ``augment`` defaults
        to the data's own (``default_augmentation``); ``balanced`` draws each class equally often (with
        replacement) instead of a permutation."""
        part = getattr(self, split)
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        if train and batch_size > len(part):
            raise UserError(f"batch size {batch_size} is larger than the {split} set ({len(part)} images)")
        cls = TensorLoader if isinstance(part, TensorSplit) else FolderLoader
        augment = (augment or self.default_augmentation()) if train else None
        return cls(part, spec or self.spec, batch_size, train=train, seed=seed, device=device, rank=rank,
                   world=world, workers=workers, augment=augment, balanced=balanced)


# ---------------------------------------------------------------------------------------------- loaders
def _shard(n: int, train: bool, seed: int, epoch: int, rank: int, world: int,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's sample order. Training: a (seed, epoch) permutation (or, with per-sample ``weights``, n draws
    with replacement) padded to a multiple of world, as DistributedSampler does (ranks must take the same number
    of steps). Evaluation: rank::world, no padding."""
    if not train:
        return torch.arange(rank, n, world)
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
    order = torch.randperm(n, generator=gen) if weights is None else torch.multinomial(weights, n, True, generator=gen)
    total = math.ceil(n / world) * world
    order = torch.cat([order, order[: total - n]])
    return order[rank::world]


def _balancing_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights that make every class equally likely: 1 / (images of its class)."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


def _batch_bounds(count: int, batch_size: int, train: bool) -> list[tuple[int, int]]:
    bounds = [(i, min(i + batch_size, count)) for i in range(0, count, batch_size)]
    if train and bounds and bounds[-1][1] - bounds[-1][0] == 1 and len(bounds) > 1:
        bounds.pop()  # batch norm cannot train on a batch of one
    return bounds


class TensorLoader:
    """Batches of an in-memory split, augmented on the device: yields (images float N x C x H x W, labels, indices)."""

    def __init__(self, split: TensorSplit, spec: InputSpec, batch_size: int, *, train: bool, seed: int, device,
                 rank: int, world: int, workers: int = 0, augment: Augmentation | None = None,
                 balanced: bool = False):
        self._setup(split, spec, batch_size, train, seed, device, rank, world, augment, balanced)
        # The images on the network's input once, when that fits in memory; otherwise batch by batch.
        self.fitted = len(split) * math.prod(spec.size) <= FIT_CACHE_BYTES
        images = self._fit(split.images) if self.fitted else split.images
        self.images = images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.set_epoch(0)

    def _setup(self, split, spec: InputSpec, batch_size: int, train: bool, seed: int, device, rank: int, world: int,
               augment: Augmentation | None, balanced: bool) -> None:
        self.split, self.spec, self.batch_size, self.train, self.seed = split, spec, batch_size, train, seed
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.augment = augment if train else None
        self.weights = _balancing_weights(split.labels) if train and balanced else None
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(fit_images(images.cpu().numpy(), self.spec))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = _shard(len(self.split), self.train, self.seed, epoch, self.rank, self.world, self.weights)
        self.bounds = _batch_bounds(len(self.order), self.batch_size, self.train)

    def __len__(self) -> int:
        return len(self.bounds)

    @property
    def num_samples(self) -> int:
        return sum(b - a for a, b in self.bounds)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches from batch number ``start`` of the current epoch (a resumed epoch skips what it has seen)."""
        for b in range(start, len(self.bounds)):
            lo, hi = self.bounds[b]
            idx = self.order[lo:hi].to(self.device)
            x = self.images[idx] if self.fitted else self._fit(self.images[idx]).to(self.device)
            if self.augment is not None:
                x = augment_images(x, self.augment, mix_seed(self.seed, self.epoch, b, self.rank))
            yield self._normalise(x), self.labels[idx], idx

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # The float32 operations of cnnzoo.images.normalize, in the same order: the same bits as predict's.
        return ((x.float() / 255.0 - self.mean) / self.std).contiguous()


class _FolderDataset(torch.utils.data.Dataset):
    """Items are (index, sample seed or None): the seed makes each training crop a function of (seed, epoch, index).
    Training items are uint8 (normalised on the device, as in-memory batches are), evaluation items float32."""

    def __init__(self, split: FolderSplit, spec: InputSpec, augment: Augmentation | None):
        self.samples, self.spec, self.train = split.samples, spec, augment is not None
        if augment is not None:
            fit = functools.partial(fit_image, spec=spec)
            self.transform = image_transform(augment, (spec.height, spec.width), fit)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int | None]):
        index, seed = item
        path, label = self.samples[index]
        image = open_image(path, channels=self.spec.channels)
        if self.train:
            with torch.random.fork_rng(devices=[]):  # never disturb the generator of the process it runs in
                torch.default_generator.manual_seed(seed)
                x = self.transform(image)
        else:
            x = torch.from_numpy(preprocess(image, self.spec))
        return x, label, index


class _SeededSampler(torch.utils.data.Sampler):
    def __init__(self, loader: FolderLoader, start: int):
        self.loader, self.start = loader, start

    def __iter__(self):
        ld = self.loader
        for b in range(self.start, len(ld.bounds)):
            lo, hi = ld.bounds[b]
            for pos in range(lo, hi):
                seed = mix_seed(ld.seed, ld.epoch, pos, ld.rank) if ld.train else None
                yield int(ld.order[pos]), seed

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self.loader.bounds[self.start:])


class FolderLoader(TensorLoader):
    """Batches of an ImageFolder split through a DataLoader with worker processes; same interface as TensorLoader."""

    def __init__(self, split: FolderSplit, spec: InputSpec, batch_size: int, *, train: bool, seed: int, device,
                 rank: int, world: int, workers: int = 2, augment: Augmentation | None = None,
                 balanced: bool = False):
        self._setup(split, spec, batch_size, train, seed, device, rank, world, augment, balanced)
        self.workers = workers
        self.dataset = _FolderDataset(split, spec, self.augment)
        self.set_epoch(0)

    def iterate(self, start: int = 0):
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=_SeededSampler(self, start), num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        for x, y, idx in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield (self._normalise(x) if self.train else x), y, idx


# ------------------------------------------------------------------------------------- in-memory datasets
@dataclass(frozen=True)
class _Kind:
    """How an in-memory dataset is fed: its image files' fitting policy and its training augmentation."""

    size: tuple[int, int] | None  # default H x W of the network's input; None: the images' native size
    resize: str  # the InputSpec policy that maps an image file of this kind onto the input (cnnzoo.artifact)
    framing: float  # resize_size / min(H, W): MNIST's 28 x 28 digit inside LeNet-5's 32 x 32 input is 28/32
    aug: str  # the augmentation preset (cnnzoo.augment.PRESETS)
    pad: int  # its crop padding (affine: largest shift) in pixels at a 32 x 32 input, scaled with the input
    flip: bool  # random horizontal flips (never for digits or handwriting)


KINDS = {
    # The 8 x 8 digits stretched to LeNet-5's 32 x 32; shifts of up to 3 pixels (3/4 of an original pixel).
    "digits": _Kind((32, 32), "stretch", 1.0, "affine", 3, False),
    # 28 x 28 zero-padded to 32 x 32, as LeCun et al. fed MNIST to LeNet-5.
    "mnist": _Kind((32, 32), "pad", 28 / 32, "crop-flip", 2, False),
    "fashion_mnist": _Kind((32, 32), "pad", 28 / 32, "crop-flip", 2, True),
    "cifar10": _Kind(None, "crop", 1.0, "crop-flip", 4, True),
    "cifar100": _Kind(None, "crop", 1.0, "crop-flip", 4, True),
    "fake": _Kind(None, "crop", 1.0, "crop-flip", 4, True),
}


def _aug_defaults(aug: str, flip: bool, pad: int, train_images: int) -> dict:
    """Data.aug_defaults: a milder resized crop for small sets (ImageNet's 8 % of the area is noise there)."""
    scale = (0.35, 1.0) if train_images < SMALL_PHOTO_SET else (0.08, 1.0)
    return dict(aug=aug, flip=flip, crop_pad=pad, crop_scale=scale)


def _stats(images: np.ndarray, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N x C x h x w training images, as the network's channels see them."""
    if images.shape[1] != channels:  # grey data into a 3-channel net (or the reverse): the converted pixels
        native = InputSpec(channels, *images.shape[2:], (0.0,) * channels, (1.0,) * channels, "stretch")
        images = fit_images(images, native)
    pixels = torch.from_numpy(images).float().div(255).transpose(0, 1).reshape(channels, -1)
    return tuple(round(float(v), 4) for v in pixels.mean(1)), tuple(round(float(v), 4) for v in pixels.std(1))


def _tensor_data(name: str, classes: list[str], train: tuple[np.ndarray, np.ndarray],
                 val: tuple[np.ndarray, np.ndarray], input_size, options: dict) -> Data:
    """Wrap native uint8 N x C x h x w arrays; mean and std are measured on the training images."""
    kind = KINDS[name]
    images = np.ascontiguousarray(train[0])
    native = (images.shape[1], *(kind.size or images.shape[2:]))
    channels, height, width = resolve_input_size(input_size, native)
    mean, std = _stats(images, channels)
    spec = InputSpec(channels, height, width, mean, std, kind.resize, max(1, round(kind.framing * min(height, width))))

    def split(part: str, arrays: tuple[np.ndarray, np.ndarray]) -> TensorSplit:
        _check_pair(*arrays, len(classes), f"{name} {part} split")  # the readers name files; this is the last gate
        x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        return TensorSplit(x, y.long(), f"{name}[{part}]")

    pad = max(1, round(kind.pad * min(height, width) / 32))
    return Data(name, classes, spec, split("train", train), split("val", val), options,
                _aug_defaults(kind.aug, kind.flip, pad, len(images)))


def _digits() -> tuple[list[str], tuple, tuple]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # The 8 x 8 scans as they are, values 0..16 as 0..255: exactly what a digit saved as a PNG file holds.
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    # The fixed split everything (demo, baseline, tests) shares: stratified, 20 % test, seed 0.
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    return [str(i) for i in range(10)], (images[tr], labels[tr]), (images[te], labels[te])


def _find(root: Path, names: list[str], what: str) -> Path:
    """The first of ``names`` at root, in a folder below it or in its raw/ (torchvision's layout); root itself
    when it is such a file (an archive passed as --data-dir)."""
    if root.is_file() and root.name in names:
        return root
    for base in (root, *sorted(p for p in root.glob("*") if p.is_dir()), *sorted(root.glob("*/raw"))):
        for name in names:
            if (base / name).exists():
                return base / name
    raise UserError(f"no {what} under {root} (looked for {', '.join(names)}); pass --download when online")


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}
    try:
        for train in (True, False):
            cls[name](str(root), train=train, download=True)
    except Exception as err:
        raise UserError(f"could not download {name} into {root}: {str(err).splitlines()[0][:200]}") from None


class _CifarLayout(NamedTuple):
    """Where the python-version files of a CIFAR dataset are and which keys they use."""

    folder: str  # the archive's top folder
    archive: str
    batches: list[str]  # training batches, then the test batch
    meta: str
    labels: bytes  # key of the label list in each batch
    names: bytes  # key of the class-name list in the meta file
    classes: int


CIFAR = {
    "cifar10": _CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "batches.meta", b"labels",
                            b"label_names", 10),
    "cifar100": _CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ["train", "test"], "meta",
                             b"fine_labels", b"fine_label_names", 100),
}


def _numpy_array_globals() -> dict[tuple[str, str], object]:
    """numpy's array and scalar reconstruction, under the module names numpy 1.x (numpy.core) and 2.x
    (numpy._core) write into pickles."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    found = {"multiarray": {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar},
             "numeric": {"_frombuffer": numeric._frombuffer}}
    return {(f"{core}.{module}", name): fn for core in ("numpy.core", "numpy._core")
            for module, fns in found.items() for name, fn in fns.items()}


PLAIN_KINDS = "biuf"  # bool, int, uint, float: CIFAR's pixels (uint8) and labels; never objects, records, strings


def _check_plain(dtype: np.dtype) -> None:
    canonical = np.dtype(dtype.str)
    plain = dtype.kind in PLAIN_KINDS and canonical.kind in PLAIN_KINDS and not dtype.hasobject and \
        dtype.fields is None and dtype.subdtype is None and \
        (dtype.itemsize, dtype.alignment, dtype.flags) == (canonical.itemsize, canonical.alignment, canonical.flags)
    if not plain:  # an object array would unpickle arbitrary objects as its items, a forged one read raw memory
        raise pickle.UnpicklingError(f"only plain numeric arrays are allowed, not {dtype!r}")


def _plain_dtype(spec, align=False, copy=True) -> np.dtype:
    dtype = np.dtype(spec, bool(align), True)  # always a copy: a state applied to it must not reach numpy's own
    _check_plain(dtype)
    return dtype


def _byte_string(kind: type):
    def make(*args):
        if args and isinstance(args[0], int):  # bytes(n) allocates n bytes: refuse a size from a file
            raise pickle.UnpicklingError(f"{kind.__name__}(size) is not allowed")
        return kind(*args)
    return make


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); no other codec is needed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin-1")


class _ArrayUnpickler(pickle._Unpickler):
    """Unpickles dicts, lists, bytes and plain numpy arrays, nothing else: the globals a CIFAR batch needs (numpy's
    array and scalar reconstruction under its 1.x and 2.x module names, the dtype, and Python 2/3 byte strings).
    Any other global, the way a pickle runs code, is refused. It is pickle's Python implementation, because the
    state a pickle applies to an object (BUILD) must be checked too: numpy's dtype.__setstate__ accepts forged
    flags (a uint8 that claims to hold objects), which would make the array that follows read raw memory."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _build(self) -> None:
        target = self.stack[-2]
        if not isinstance(target, (np.ndarray, np.dtype)):
            raise pickle.UnpicklingError(f"refusing to set the state of a {type(target).__name__}")
        pickle._Unpickler.load_build(self)
        if isinstance(target, np.dtype):
            _check_plain(target)

    dispatch[pickle.BUILD[0]] = _build

    def find_class(self, module: str, name: str):
        allowed = _CIFAR_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays, lists and "
                                         "bytes, and this global could run code")
        return allowed

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


_CIFAR_GLOBALS = {
    **_numpy_array_globals(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1,
    **{(builtins, kind.__name__): _byte_string(kind) for builtins in ("builtins", "__builtin__")
       for kind in (bytes, bytearray)},
}


def _unpickle(f, source: str) -> object:
    """One CIFAR python-version file through the restricted unpickler; any failure is one line naming the file."""
    try:
        return _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a refused global, a truncated or malformed pickle: all mean "not a CIFAR file"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"{source} is not a readable CIFAR file: {reason}") from None


def _as_labels(values: object) -> np.ndarray:
    """A label list as an array; anything but a flat list of numbers becomes an object array, which is refused."""
    try:
        return np.asarray(values) if isinstance(values, (list, np.ndarray)) else np.asarray(None, dtype=object)
    except ValueError:  # a ragged list
        return np.asarray(None, dtype=object)


def _check_pair(images: np.ndarray, labels: np.ndarray, num_classes: int, source: str) -> None:
    """Images (uint8 N x C x H x W, N >= 1) and labels (N integers in 0 .. num_classes - 1) that belong together:
    a mismatch would train on shifted pairs, a label out of range crash mid-training."""
    if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape:
        raise UserError(f"{source}: images must be uint8 N x C x H x W with N >= 1, got {images.dtype} "
                        f"{'x'.join(map(str, images.shape))}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: labels must be a list of integers, got {labels.dtype} "
                        f"{'x'.join(map(str, labels.shape)) or 'scalar'}")
    if len(images) != len(labels):
        raise UserError(f"{source}: {len(images)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise UserError(f"{source}: label {labels[bad[0]]} (index {bad[0]}) is outside 0..{num_classes - 1} "
                        f"({num_classes} classes)")


def _cifar_batch(part: object, layout: _CifarLayout, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(part, dict) or b"data" not in part or layout.labels not in part:
        raise UserError(f"{source}: not a CIFAR batch (a dict with b'data' and {layout.labels!r})")
    data = part[b"data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{source}: data must be an N x 3072 array, got {type(data).__name__} "
                        f"{getattr(data, 'shape', '')}")
    images, labels = data.reshape(-1, 3, 32, 32), _as_labels(part[layout.labels])
    _check_pair(images, labels, layout.classes, source)
    return images, labels.astype(np.int64)


def _cifar_classes(meta: object, layout: _CifarLayout, source: str) -> list[str]:
    names = meta.get(layout.names) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != layout.classes or \
            not all(isinstance(n, (bytes, str)) for n in names) or len(set(names)) != len(names):
        raise UserError(f"{source}: {layout.names!r} must list {layout.classes} distinct class names")
    return [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]


def _cifar(name: str, root: Path) -> tuple[list[str], tuple, tuple]:
    layout = CIFAR[name]
    found = root if (root / layout.batches[0]).exists() else \
        _find(root, [layout.folder, layout.archive], f"{name} archive or folder")
    wanted = layout.batches + [layout.meta]
    # The python-version files are pickles: read through _ArrayUnpickler, which admits numpy arrays and nothing
    # that could run code; then every batch's shape, dtype, label count and range are checked.
    parts: dict[str, object] = {}
    if found.is_file():
        try:
            with tarfile.open(found) as tar:
                for member in tar.getmembers():
                    base = Path(member.name).name
                    if base in wanted and member.isfile():
                        parts[base] = _unpickle(tar.extractfile(member), f"{found}:{member.name}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise UserError(f"{found} is not a readable {name} archive: {err}") from None
    else:
        for base in wanted:
            if not (found / base).is_file():
                raise UserError(f"{found} lacks {base}: not a complete {name} folder")
            with open(found / base, "rb") as f:
                parts[base] = _unpickle(f, str(found / base))
    missing = [f for f in wanted if f not in parts]
    if missing:
        raise UserError(f"{found} lacks {', '.join(missing)}: not a complete {name} archive")
    sep = ":" if found.is_file() else "/"  # archive:member, folder/file
    classes = _cifar_classes(parts[layout.meta], layout, f"{found}{sep}{layout.meta}")

    def arrays(keys: list[str]):
        pairs = [_cifar_batch(parts[k], layout, f"{found}{sep}{k}") for k in keys]
        return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])

    return classes, arrays(layout.batches[:-1]), arrays(layout.batches[-1:])


IDX_UBYTE = 0x08  # IDX type code of unsigned bytes: MNIST and Fashion-MNIST store images and labels so
MAX_IDX_BYTES = 1 << 31  # far above MNIST's 47 MB; a header claiming more is a broken or hostile file


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (3: images, 1: labels), read no further than its
    header says: a wrong magic, type, rank, size or a truncated or overlong body is one line naming the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise ValueError("no IDX magic number")
            if head[2] != IDX_UBYTE or head[3] != ndim:
                raise ValueError(f"type 0x{head[2]:02x} with {head[3]} dimension(s), expected unsigned bytes "
                                 f"(0x{IDX_UBYTE:02x}) with {ndim}")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError("truncated header")
            shape = struct.unpack(f">{ndim}I", dims)
            size = math.prod(shape)
            if size == 0 or size > MAX_IDX_BYTES:
                raise ValueError(f"implausible shape {'x'.join(map(str, shape))}")
            raw = f.read(size)
            if len(raw) < size:
                raise ValueError(f"truncated: {len(raw)} of {size} data bytes")
            if f.read(1):
                raise ValueError(f"longer than its header says ({size} data bytes)")
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise UserError(f"{path} is not a readable IDX file: {err}") from None
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()  # writable


def _mnist(name: str, root: Path) -> tuple[list[str], tuple, tuple]:
    classes = [str(i) for i in range(10)] if name == "mnist" else FASHION_CLASSES

    def split(prefix: str):
        paths = [_find(root, [stem, stem + ".gz"], f"{name} file {stem}")
                 for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")]
        x = _read_idx(paths[0], 3)[:, None]  # 28 x 28: KINDS pads them onto the input
        y = _read_idx(paths[1], 1).astype(np.int64)
        _check_pair(x, y, len(classes), f"{paths[0]} and {paths[1].name}")
        return x, y

    return classes, split("train"), split("t10k")


def _fake(num_classes: int, size: tuple[int, int, int], samples: int) -> tuple[list[str], tuple, tuple]:
    gen = torch.Generator().manual_seed(0)
    n_val = max(num_classes, samples // 4)
    x = torch.randint(0, 256, (samples + n_val, *size), generator=gen, dtype=torch.uint8).numpy()
    y = (torch.arange(samples + n_val) % num_classes).numpy().astype(np.int64)
    return [f"class{i}" for i in range(num_classes)], (x[:samples], y[:samples]), (x[samples:], y[samples:])


# -------------------------------------------------------------------------------------------- ImageFolder
@dataclass
class _Decoded:
    """What the check of one ImageFolder split found: good samples with their sizes, pixels of the small ones."""

    samples: list[tuple[str, int]]
    sizes: list[tuple[int, int]]  # (h, w) of each good sample
    pixels: list[np.ndarray | None]  # uint8 C x h x w while the images are small and the budget lasts
    bad: list[str]


def _check_images(samples: list[tuple[str, int]], channels: int, budget: list[int]) -> _Decoded:
    """Decode every file once (in threads: PIL releases the GIL). Pixels of images of SMALL_SIDE or less are kept
    while ``budget`` (bytes, shared by the splits) lasts, so that a small-image folder need not be decoded again."""
    lock = threading.Lock()

    def decode(sample: tuple[str, int]):
        try:
            image = open_image(sample[0], channels=channels)
            image.load()
        except Exception:  # not an image, truncated, unsupported, too large: all skipped the same way
            return None
        size = (image.height, image.width)
        if max(size) > SMALL_SIDE:
            return size, None
        pixels = np.asarray(image, dtype=np.uint8).reshape(*size, channels).transpose(2, 0, 1)
        with lock:
            budget[0] -= pixels.nbytes
            keep = budget[0] >= 0
        return size, np.ascontiguousarray(pixels) if keep else None

    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(decode, samples))
    good = [(s, f) for s, f in zip(samples, found) if f is not None]
    return _Decoded([s for s, _ in good], [f[0] for _, f in good], [f[1] for _, f in good],
                    [s[0] for s, f in zip(samples, found) if f is None])


def _folder_kind(decoded: dict[str, _Decoded], input_size: tuple[int, int, int]) -> tuple[InputSpec, dict, bool]:
    """(spec, aug_defaults, hold in memory) of an ImageFolder, from what its images are.

    Small images (every side SMALL_SIDE or less) are CIFAR-like: pad-crop, and no flip when they are grey (scans
    of writing, where a mirrored glyph is another glyph or none). Of one size with the input's aspect ratio, they
    are stretched onto the input whole (a centre crop would cut off the strokes of an 8x8 digit), and they are held
    in memory when their pixels were all kept. Anything else is photos: the centre crop, a resized crop."""
    channels, height, width = input_size
    sizes = {size for d in decoded.values() for size in d.sizes}
    small = max(max(size) for size in sizes) <= SMALL_SIDE
    pixels = [p for d in decoded.values() for p in d.pixels]
    spec = photo_spec(input_size)
    one_size = next(iter(sizes)) if len(sizes) == 1 else None
    if small and one_size and one_size[0] * width == one_size[1] * height:
        spec = dataclasses.replace(spec, resize="stretch")
    pad, n_train = max(1, round(min(height, width) / 8)), len(decoded["train"].samples)
    if not small:
        return spec, _aug_defaults("imagenet", True, pad, n_train), False
    grey = channels == 1 or all(p is not None and (p == p[:1]).all() for p in pixels)
    cached = one_size is not None and all(p is not None for p in pixels)
    return spec, _aug_defaults("crop-flip", not grey, pad, n_train), cached


def _imagefolder(root: Path, input_size: tuple[int, int, int], strict: bool, options: dict,
                 splits: Sequence[str] = ("train", "val")) -> Data:
    if not root.is_dir():
        raise UserError(f"no such data folder: {root}")
    # The contract is checked before decoding: images read at an impossible channel count (2) all fail to decode,
    # which would blame every image instead of the input size.
    photo_spec(input_size)
    # A split not asked for stays empty: evaluating val/ need not decode every training image.
    decoded = {part: _Decoded([], [], [], []) for part in ("train", "val")}
    classes: list[str] = []
    budget = [FOLDER_CACHE_BYTES]
    for part in splits:
        part_classes, samples = scan_image_folder(root / part)
        if classes and part_classes != classes:
            raise UserError(f"{root}/val classes differ from {root}/train classes")
        classes = part_classes
        decoded[part] = found = _check_images(samples, input_size[0], budget)
        if found.bad:
            message = skipped_warning(found.bad, root / part)
            if strict:
                raise UserError(message.removeprefix("skipped "))
            print(f"warning: {message}", file=sys.stderr)
        if not found.samples:
            raise UserError(f"no readable image in {root / part}")
    spec, aug_defaults, cached = _folder_kind(decoded, input_size)

    def split(part: str) -> TensorSplit | FolderSplit:
        d = decoded[part]
        if not cached or not d.samples:
            return FolderSplit(d.samples, d.bad)
        labels = torch.tensor([label for _, label in d.samples], dtype=torch.long)
        return TensorSplit(torch.from_numpy(np.stack(d.pixels)), labels, f"imagefolder[{part}]",
                           [path for path, _ in d.samples])

    return Data("imagefolder", classes, spec, split("train"), split("val"), options, aug_defaults)


def _limit(data: Data, limit: int) -> Data:
    """Keep a fixed random subset of at most ``limit`` images per split (tests and quick experiments)."""
    for part in ("train", "val"):
        split = getattr(data, part)
        if len(split) > limit:
            keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:limit].sort().values
            if isinstance(split, TensorSplit):
                split.images, split.labels = split.images[keep], split.labels[keep]
                split.names = None if split.names is None else [split.names[i] for i in keep.tolist()]
            else:
                split.samples = [split.samples[i] for i in keep.tolist()]
    return data


def load_data(name: str, data_dir: str | Path | None = None, *, download: bool = False,
              input_size: str | tuple[int, ...] | None = None,
              default_input_size: tuple[int, int, int] = (3, 224, 224), limit: int | None = None,
              strict: bool = False, num_classes: int = 10, fake_samples: int = 1024,
              splits: Sequence[str] = ("train", "val")) -> Data:
    """Load a dataset by name.

    Args:
        name: one of DATASETS.
        data_dir: folder (or archive) holding the files; ImageFolder: the folder with train/ and val/.
        download: fetch CIFAR/MNIST through torchvision when they are not at data_dir (needs the network).
        input_size: (C, H, W), (H, W) or H (cnnzoo.artifact.parse_input_size) the network takes; default: the
            dataset's own (32 x 32 for the digits and MNIST, as LeNet-5 takes them) or, for ImageFolder and fake
            data, default_input_size. H and H x W keep the dataset's channels (ImageFolder: the model's).
        default_input_size: the model's default size, used by ImageFolder and fake data.
        limit: keep at most this many images per split (a fixed random subset).
        strict: ImageFolder: an unreadable image is an error rather than a counted warning.
        num_classes, fake_samples: class count and training-set size of the fake dataset.
        splits: ImageFolder: the splits to read ("val" alone for evaluation); the others are left empty.
    """
    options = {"name": name, "data_dir": str(data_dir) if data_dir else None,
               "input_size": list(input_size) if isinstance(input_size, (tuple, list)) else input_size,
               "limit": limit, "num_classes": num_classes, "fake_samples": fake_samples}
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    check(options, DATA_OPTIONS)  # --limit 0 would mean "no limit", --limit -5 "drop 5 images"
    if name == "digits":
        data = _tensor_data(name, *_digits(), input_size=input_size, options=options)
    elif name == "fake":
        size = resolve_input_size(input_size, default_input_size)
        data = _tensor_data(name, *_fake(num_classes, size, fake_samples), input_size=size, options=options)
    else:
        if data_dir is None:
            raise UserError(f"--data {name} needs --data-dir")
        root = Path(data_dir).expanduser()
        if name == "imagefolder":
            data = _imagefolder(root, resolve_input_size(input_size, default_input_size), strict, options, splits)
        else:
            if not root.exists() and not download:
                raise UserError(f"no such data folder: {root}")
            if download:
                root.mkdir(parents=True, exist_ok=True)
                _torchvision_download(name, root)
            reader = _cifar if name.startswith("cifar") else _mnist
            data = _tensor_data(name, *reader(name, root), input_size=input_size, options=options)
    return _limit(data, limit) if limit is not None else data


def load_data_for(card: ModelCard, **overrides) -> Data:
    """The dataset a model was trained on (the load_data options its card records, updated by ``overrides``
    such as name, data_dir, limit), at the model's input size."""
    options = dict(card.extra.get("data") or {})
    options.update({k: v for k, v in overrides.items() if v is not None})
    name = options.pop("name", None)
    if name is None:
        raise UserError("the checkpoint does not record its dataset; pass --data")
    options.pop("input_size", None)
    return load_data(name, input_size=card.input.size, default_input_size=card.input.size, **options)


def split_data(src: str | Path, dst: str | Path, val: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Split a class-per-folder tree into dst/train and dst/val, stratified (each class split at ``val``).

    Files are copied; dst must not exist or be empty (nothing is written over). Returns images per split.
    """
    src, dst = Path(src), Path(dst)
    check({"val": val, "seed": seed}, SPLIT_OPTIONS)
    classes, samples = scan_image_folder(src)
    if dst.exists() and any(dst.iterdir()):
        raise UserError(f"{dst} already exists and is not empty")
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for label, name in enumerate(classes):
        files = [Path(p) for p, lab in samples if lab == label]
        order = rng.permutation(len(files))
        n_val = min(len(files) - 1, max(1, round(len(files) * val))) if len(files) > 1 else 0
        for rank, i in enumerate(order):
            part = "val" if rank < n_val else "train"
            target = dst / part / name / files[i].relative_to(src / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[i], target)
            counts[part] += 1
    for part in ("train", "val"):
        for name in classes:
            (dst / part / name).mkdir(parents=True, exist_ok=True)
    (dst / "class_indices.json").write_text(json.dumps({n: i for i, n in enumerate(classes)}, indent=1) + "\n")
    return counts
