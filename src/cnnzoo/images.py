"""The one image loader of cnnzoo: training (ImageFolder), evaluate, predict, explain and serve all read images here.

Torch-free (PIL + numpy), so the ONNX Runtime / OpenVINO paths and the service never import torch.

    open_image(source)  -> an "RGB" (channels=3) or "L" (channels=1) PIL image, decoded safely:
        - only the formats of ALLOWED_FORMATS are parsed at all (Pillow's other plugins never read the file; their
          magic-byte checks only name the format of a refused file);
        - the pixel count declared in the header is checked against max_pixels *before* decoding, so a
          decompression bomb (a tiny PNG declaring 30000x30000) costs nothing;
        - the EXIF orientation is applied (phone photos come out upright);
        - every mode is converted faithfully: 1, L, P, RGB, CMYK, YCbCr, HSV, LAB; 16-bit "I;16" by its 16-bit
          range, 32-bit "I" and float "F" by the range their values really span (Pillow's own convert clips them
          at 255); transparency (LA, PA, RGBA, P or RGB/L with a transparent colour) is composited on WHITE,
          the background a viewer shows and the one documents and web graphics are drawn for. Embedded ICC
          profiles are not applied (neither do torchvision's decoders), so CMYK uses the plain inversion.
    preprocess(image, spec) -> float32 C x H x W: the model's InputSpec (cnnzoo.artifact) applied, its geometric half
        (fit_image: channels, resize policy, centre crop or pad) then normalize; for the "crop" policy this is
        torchvision's eval preset (Resize -> CenterCrop -> ToTensor -> Normalize) value for value.
    scan_image_folder(root) -> the one class-per-folder scanner (training, evaluation, calibration, split-data).
    skipped_warning(files, folder) -> the one line reporting the unreadable files a pass over a folder skipped.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps

from cnnzoo.artifact import InputSpec
from cnnzoo.errors import UserError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "BACKGROUND",
    "ImageError",
    "UnsupportedFormat",
    "ImageTooLarge",
    "open_image",
    "to_mode",
    "fit_image",
    "fit_images",
    "normalize",
    "preprocess",
    "image_files",
    "scan_image_folder",
    "skipped_warning",
]

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"})
# MPO is how Pillow names the multi-picture JPEGs many phones write; it is a JPEG and decodes as one.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# File extensions of the allowed formats, for scanning folders (ImageFolder, `cnnzoo predict DIR`).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# 64 megapixels (8192 x 8192, 192 MB once decoded as RGB): above any camera's default output, far below what
# would exhaust a worker's memory. Pillow's own limit (89 MP warning, 179 MP error) is looser.
DEFAULT_MAX_PIXELS = 8192 * 8192
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white

_MODES = {1: "L", 3: "RGB"}
# What Pillow's plugins raise on malformed data (struct.error and IndexError from headers cut short, ...).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)


class ImageError(UserError):
    """A file or upload that cannot be used as an image: not an image, truncated, corrupt. Names the file."""


class UnsupportedFormat(ImageError):
    """An image in a format outside ALLOWED_FORMATS (the service answers 415)."""


class ImageTooLarge(ImageError):
    """An image whose declared pixel count exceeds the limit: a decompression bomb (the service answers 413)."""


def _label(source: str | os.PathLike | bytes | BinaryIO, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or "<image bytes>"


def _sniff(prefix: bytes) -> str | None:
    """The format whose magic bytes start `prefix`, by Pillow's accept() functions only (no plugin parses it)."""
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return _FORMAT_ALIASES.get(fmt, fmt)
        except _READ_ERRORS:  # some accept() functions index into the prefix: an empty file is not theirs
            continue
    return None


def _open(fp: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Parse the header of an allowed format and refuse a bomb, without decoding a pixel."""
    try:
        # Pillow warns (89 MP) then raises (179 MP) on its own bomb check inside open(); the warning becomes an
        # error here. catch_warnings is process-global, but a race only ever loses that filter for an image above
        # Pillow's 89 MP, which the max_pixels check below refuses anyway whenever max_pixels is the default.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=sorted(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(f"{label}: image too large ({err})") from None
    except Image.UnidentifiedImageError:
        fp.seek(0)
        fmt = _sniff(fp.read(32))
        if fmt is None:
            raise ImageError(f"{label}: not an image (or not one Pillow can read)") from None
        if fmt not in ALLOWED_FORMATS:
            allowed = ", ".join(sorted(ALLOWED_FORMATS))
            raise UnsupportedFormat(f"{label}: {fmt} images are not accepted (allowed: {allowed})") from None
        raise ImageError(f"{label}: corrupt {fmt} header") from None
    except _READ_ERRORS as err:
        fp.seek(0)
        raise ImageError(f"{label}: truncated or corrupt {_sniff(fp.read(32)) or 'image'} ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        pixels = width * height
        raise ImageTooLarge(f"{label}: {width}x{height} = {pixels:,} pixels exceeds the limit of {max_pixels:,}")
    return image


def _rescale(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grey image mapped onto 0..255 without clipping (Pillow's convert("L") clips at 255)."""
    data = np.asarray(image)
    if image.mode.startswith("I;16"):
        # 16-bit samples have a known range: 0..65535 maps onto 0..255 exactly (65535 / 255 = 257).
        scaled = data.astype(np.float64) / 257.0
    else:
        # "I" (int32) and "F" (float32) carry no nominal range: scale from min(0, lowest) to the highest value,
        # so black stays black and relative intensities are kept; floats already in [0, 1] use [0, 1].
        data = data.astype(np.float64)
        finite = data[np.isfinite(data)]
        low = min(0.0, float(finite.min())) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            high = 1.0
        data = np.nan_to_num(data, nan=low, posinf=high, neginf=low)
        span = high - low
        scaled = np.zeros_like(data) if span <= 0 else (data - low) * (255.0 / span)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _composite(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


def to_mode(image: Image.Image, channels: int = 3) -> Image.Image:
    """Convert a PIL image of any mode to "RGB" (channels=3) or "L" (channels=1), as open_image does."""
    if channels not in _MODES:
        raise UserError(f"images have 1 or 3 channels, not {channels}")
    target, mode = _MODES[channels], image.mode
    if mode == target:
        return image
    if mode.startswith("I") or mode == "F":
        image = _rescale(image)
    elif mode == "LAB":
        # Pillow's plain convert() would read L*a*b* as if it were RGB; go through a colour transform instead.
        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        image = ImageCms.applyTransform(image, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        image = _composite(image)
    return image.convert(target)


def open_image(
    source: str | os.PathLike | bytes | BinaryIO,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
) -> Image.Image:
    """Open an image file, bytes or binary file object safely, and return it upright as "RGB" or "L".

    Args:
        source: a path, the file's bytes, or a binary file object (an upload).
        channels: 3 for "RGB", 1 for "L".
        max_pixels: refuse images whose header declares more pixels than this, before decoding them.
        name: how error messages name the image (default: the path, or the file object's name).

    Raises:
        UnsupportedFormat: a format outside ALLOWED_FORMATS.
        ImageTooLarge: more than max_pixels pixels.
        ImageError: anything else that is not a readable image (missing, empty, truncated, corrupt).
    """
    label = _label(source, name)
    if channels not in _MODES:
        raise UserError(f"images have 1 or 3 channels, not {channels}")
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fp:
                return _decode(fp, label, channels, max_pixels)
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a directory, not an image") from None
        except PermissionError:
            raise ImageError(f"{label}: permission denied") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), label, channels, max_pixels)
    if not source.seekable():  # Pillow needs to seek; a network stream is read into memory first
        source = io.BytesIO(source.read())
    return _decode(source, label, channels, max_pixels)


def _decode(fp: BinaryIO, label: str, channels: int, max_pixels: int) -> Image.Image:
    image = _open(fp, label, max_pixels)
    fmt = _FORMAT_ALIASES.get(image.format, image.format)
    try:
        with image:
            image.load()
            # Reading the EXIF block is part of decoding: a corrupt one is a corrupt file.
            upright = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(f"{label}: image too large ({err})") from None
    except _READ_ERRORS as err:
        raise ImageError(f"{label}: truncated or corrupt {fmt} image ({err})") from None
    return to_mode(upright, channels)


_RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC}
# Pixels of the resized image before the centre crop above which only the cropped window is resampled: a sliver
# (1 x 100000 pixels, a few hundred bytes) under a 256 resize would otherwise become 256 x 25.6 M pixels.
RESIZE_BUDGET = 4096 * 4096


def _resized_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """(width, height) after the resize step of the spec's policy (cnnzoo.artifact)."""
    if spec.resize == "stretch":
        return spec.width, spec.height
    size = spec.resize_size
    # torchvision's Resize(int) for "crop": the shorter side becomes `size`, the longer int(size * long / short);
    # "pad" is the same rule on the longer side.
    shorter_first = (width <= height) == (spec.resize == "crop")
    if shorter_first:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def fit_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """The geometric half of preprocessing: an image of any mode and size as uint8 H x W x C, by the spec's
    channels, resize policy and interpolation (no normalisation)."""
    image = to_mode(image, spec.channels)
    size = _resized_size(*image.size, spec)
    if size != image.size:
        image = _resize(image, size, spec)
    array = np.asarray(image, dtype=np.uint8).reshape(image.size[1], image.size[0], spec.channels)
    return _center_crop(array, spec.height, spec.width)


def _resize(image: Image.Image, size: tuple[int, int], spec: InputSpec) -> Image.Image:
    """torchvision's Resize to ``size``; above RESIZE_BUDGET pixels, only the window that _center_crop keeps, through
    Pillow's box (its levels then differ slightly from the whole resize's, which would not fit in memory)."""
    resample = _RESAMPLING[spec.interpolation]
    width, height = size
    if width * height <= RESIZE_BUDGET:
        return image.resize(size, resample)
    w, h = min(width, spec.width), min(height, spec.height)
    left, top = int(round((width - w) / 2.0)), int(round((height - h) / 2.0))  # _center_crop's offsets
    sx, sy = image.width / width, image.height / height
    return image.resize((w, h), resample, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def fit_images(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """fit_image over a uint8 N x C x h x w batch (the in-memory datasets), as uint8 N x C x H x W.

    Image for image the same as fit_image on the PIL image of each array; when neither the channels nor the size
    change, the (then purely geometric) crop or pad is applied to the whole batch at once."""
    n, channels, height, width = batch.shape
    if channels == spec.channels and _resized_size(width, height, spec) == (width, height):
        return np.ascontiguousarray(_center_crop(batch.transpose(0, 2, 3, 1), spec.height, spec.width, axis=1)
                                    .transpose(0, 3, 1, 2))
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((n, spec.channels, spec.height, spec.width), np.uint8)
    for i in range(n):
        pixels = batch[i, 0] if channels == 1 else batch[i].transpose(1, 2, 0)
        out[i] = fit_image(Image.fromarray(np.ascontiguousarray(pixels), mode), spec).transpose(2, 0, 1)
    return out


@functools.lru_cache(maxsize=64)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """C x 256: every uint8 value of every channel, normalised by the float32 operations of _normalize_values."""
    return _normalize_values(np.arange(256, dtype=np.uint8)[:, None].repeat(len(mean), axis=1)[None], mean, std)[:, 0]


def _normalize_values(array: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    x = array.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def normalize(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 H x W x C -> float32 C x H x W in [0, 1], normalised by the spec's mean and std. The torch loaders
    of cnnzoo.data do the same float32 operations in the same order, so both give the same bits. A uint8 image
    has 256 values per channel: they are normalised once into a table and looked up (the same bits, a third of
    the time: the service does this for every request)."""
    mean, std = tuple(spec.mean), tuple(spec.std)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != len(mean):
        return _normalize_values(array, mean, std)
    table = _normalize_table(mean, std)
    out = np.empty((array.shape[2], *array.shape[:2]), dtype=np.float32)
    for channel in range(array.shape[2]):
        np.take(table[channel], array[..., channel], out=out[channel])
    return out


def preprocess(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """The one evaluation preprocessing of cnnzoo: float32 C x H x W for any PIL image (fit_image, normalize).

    Every path that shows an image to a trained network uses it: evaluation of image folders, predict, explain,
    the ONNX/OpenVINO/TorchScript runtimes and the HTTP service."""
    return normalize(fit_image(image, spec), spec)


def _center_crop(array: np.ndarray, height: int, width: int, axis: int = 0) -> np.ndarray:
    """torchvision's CenterCrop on the two axes from ``axis``, zero padding first where the crop is larger."""
    img_h, img_w = array.shape[axis : axis + 2]
    if height > img_h or width > img_w:
        pad = [(0, 0)] * array.ndim
        pad[axis] = (max(height - img_h, 0) // 2, (max(height - img_h, 0) + 1) // 2)
        pad[axis + 1] = (max(width - img_w, 0) // 2, (max(width - img_w, 0) + 1) // 2)
        array = np.pad(array, pad)
        img_h, img_w = array.shape[axis : axis + 2]
    top, left = int(round((img_h - height) / 2.0)), int(round((img_w - width) / 2.0))
    index = [slice(None)] * array.ndim
    index[axis], index[axis + 1] = slice(top, top + height), slice(left, left + width)
    return array[tuple(index)]


# ------------------------------------------------------------------------------------------ folders of images
def _known_extensions() -> frozenset[str]:
    # Every extension Pillow knows, so that an .ico or .pcx in a folder is reported as a format outside the
    # allowlist rather than silently skipped; README.txt, labels.csv and the like are not images and skipped.
    Image.init()
    return IMAGE_EXTENSIONS | frozenset(ext.lower() for ext in Image.registered_extensions())


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under a folder, recursively, sorted; hidden entries and non-image extensions skipped."""
    folder, extensions = Path(folder), _known_extensions()
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in extensions
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """A class-per-folder tree: (sorted class names, [(image path, class index)]). Used by training data,
    evaluation, int8 calibration and split-data alike.

    Raises:
        UserError: no such folder, no class sub-folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no such data folder: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class sub-folders")
    samples = []
    for label, name in enumerate(classes):
        files = image_files(root / name)
        if not files:
            raise UserError(f"class folder {root / name} holds no images")
        samples += [(str(p), label) for p in files]
    return classes, samples


def skipped_warning(skipped: Sequence[str], folder: str | os.PathLike, shown: int = 5) -> str:
    """The one line that reports the unreadable files a pass over a folder skipped: their count and the first few."""
    names = ", ".join(map(str, skipped[:shown])) + (f" and {len(skipped) - shown} more" if len(skipped) > shown else "")
    return f"skipped {len(skipped)} unreadable image(s) in {folder}: {names}"
