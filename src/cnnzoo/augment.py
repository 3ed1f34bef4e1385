"""Training augmentation as named presets on torchvision.transforms.v2 (``--aug``), with random erasing and
mixup / cutmix on top.

    none            no augmentation: the images as evaluation sees them
    crop-flip       zero-pad by crop_pad pixels, random crop back to the input size, random horizontal flip:
                    the CIFAR recipe (He et al. 2016)
    imagenet        RandomResizedCrop over crop_scale of the area, aspect 3/4 to 4/3, random flip (Szegedy et al.
                    2015); (0.08, 1) is ImageNet's, a small photo set does better with a milder (0.35, 1)
    affine          rotations of +-10 degrees, scalings of +-10 %, shifts of up to crop_pad pixels: handwriting
                    (Simard et al. 2003)
    autoaugment     the data's own crop (its default preset's geometry), then AutoAugment (Cubuk et al. 2019; the
                    CIFAR-10 policy for inputs of 64 px or less, ImageNet's above)
    randaugment     the data's crop, then RandAugment (2 operations at magnitude 9; Cubuk et al. 2020)
    trivialaugment  the data's crop, then TrivialAugment Wide (Mueller & Hutter 2021)
    augmix          the data's crop, then AugMix (severity 3, width 3; Hendrycks et al. 2020)

Options on every preset: ``flip`` (never for handwriting), random erasing of one box per image with probability
``erase`` (Zhong et al. 2020: 2-33 % of the area, aspect 0.3-3.3, filled with the mean), and mixup (Zhang et al.
2018) / cutmix (Yun et al. 2019) with mixing weights drawn from Beta(alpha, alpha) (one of the two per batch when
both are on). Mixup and cutmix turn labels into class probabilities, which torch's cross-entropy takes as they
are (label smoothing included).

The stages run where they are cheapest. Per image: geometry, flip and policy. In-memory data (cnnzoo.data's
TensorLoader) does them on the uint8 batch on the device: the geometries as whole-batch tensor operations, the
policies image by image through torchvision (on the CPU, where their many small kernels cost least). ImageFolder
trees do them in the DataLoader workers (``image_transform``). Per batch, after normalisation: erasing and mixing
(``BatchStage``, called by the training step).

Every random draw comes from a generator seeded by (seed, epoch, batch or sample, rank) (cnnzoo.data.mix_seed),
never from a running one, so a run resumed in the middle of an epoch augments exactly as the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cnnzoo.errors import UserError
from cnnzoo.options import TRAIN_OPTIONS, check

__all__ = ["PRESETS", "POLICIES", "SMALL_SIDE", "Augmentation", "augment_images", "image_transform", "BatchStage",
           "random_erase", "preset_help"]

SMALL_SIDE = 64  # pixels: images up to this size are CIFAR-like (pad-crop, not resized crops of a few pixels)
GEOMETRIES = ("none", "pad-crop", "resized-crop", "affine")
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # Zhong et al. 2020, torchvision's RandomErasing defaults


class Preset(NamedTuple):
    geometry: str | None  # a GEOMETRIES entry; None: the data's own (the geometry of its default preset)
    policy: str | None  # a POLICIES key
    help: str


PRESETS: dict[str, Preset] = {
    "none": Preset("none", None, "no augmentation"),
    "crop-flip": Preset("pad-crop", None, "pad + random crop + flip (the CIFAR recipe)"),
    "imagenet": Preset("resized-crop", None, "RandomResizedCrop over --crop-scale of the area + flip"),
    "affine": Preset("affine", None, "small rotations, scalings and shifts (handwriting)"),
    "autoaugment": Preset(None, "autoaugment", "the data's crop + AutoAugment"),
    "randaugment": Preset(None, "randaugment", "the data's crop + RandAugment"),
    "trivialaugment": Preset(None, "trivialaugment", "the data's crop + TrivialAugment"),
    "augmix": Preset(None, "augmix", "the data's crop + AugMix"),
}


def _autoaugment(size: Sequence[int]) -> v2.Transform:
    small = max(size) <= SMALL_SIDE
    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10 if small else v2.AutoAugmentPolicy.IMAGENET)


POLICIES: dict[str, Callable[[Sequence[int]], v2.Transform]] = {  # input (H, W) -> one image's policy
    "autoaugment": _autoaugment,
    "randaugment": lambda size: v2.RandAugment(num_ops=2, magnitude=9),
    "trivialaugment": lambda size: v2.TrivialAugmentWide(),
    "augmix": lambda size: v2.AugMix(severity=3, mixture_width=3),
}


def preset_help() -> str:
    """One line per preset, for --help."""
    return "; ".join(f"{name}: {p.help}" for name, p in PRESETS.items())


@dataclass(frozen=True)
class Augmentation:
    """A resolved training augmentation: the preset, the geometry it stands for on this data, and its options."""

    preset: str = "none"  # a key of PRESETS
    geometry: str = "none"  # a GEOMETRIES entry
    flip: bool = False  # random horizontal flip
    crop_pad: int = 0  # pixels at the input size: pad-crop's padding, affine's largest shift
    crop_scale: tuple[float, float] = (0.08, 1.0)  # resized crop: fraction of the image's area
    erase: float = 0.0  # probability of erasing one random box per image
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0: off

    @classmethod
    def build(cls, preset: str, data_preset: str, *, flip: bool, crop_pad: int, crop_scale: Sequence[float],
              erase: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Augmentation:
        """Check the options (their ranges are cnnzoo.options.TRAIN_OPTIONS'); a policy preset takes the geometry of
        the data's own preset ``data_preset``."""
        if preset not in PRESETS:
            raise UserError(f"unknown augmentation {preset!r}; choose from {', '.join(PRESETS)}")
        check(dict(crop_pad=crop_pad, crop_scale=list(crop_scale), erase=erase, mixup=mixup, cutmix=cutmix),
              TRAIN_OPTIONS)
        low, high = (float(v) for v in crop_scale)
        if low > high:
            raise UserError(f"--crop-scale takes LOW,HIGH with LOW <= HIGH, got {low:g},{high:g}")
        geometry = PRESETS[preset].geometry or PRESETS[data_preset].geometry or "none"
        return cls(preset, geometry, bool(flip), int(crop_pad), (low, high), float(erase), float(mixup),
                   float(cutmix))

    @property
    def policy(self) -> str | None:
        return PRESETS[self.preset].policy

    @property
    def batch_level(self) -> bool:
        return bool(self.erase or self.mixup or self.cutmix)

    def describe(self) -> str:
        """One line for the run header: "crop-flip (pad 4, flip)", "autoaugment (pad-crop 4, no flip), erase 0.25"."""
        how = {"pad-crop": f"pad {self.crop_pad}", "affine": f"shift {self.crop_pad}",
               "resized-crop": f"scale {self.crop_scale[0]:g}-{self.crop_scale[1]:g}"}.get(self.geometry)
        geometry = f"{self.geometry}, {how}" if self.policy and how else self.geometry if self.policy else how
        parts = [p for p in (geometry, "flip" if self.flip else "no flip") if p]
        extras = [f"{name} {value:g}" for name, value in (("erase", self.erase), ("mixup", self.mixup),
                                                           ("cutmix", self.cutmix)) if value]
        return ", ".join([f"{self.preset} ({', '.join(parts)})", *extras])

    def to_dict(self) -> dict:
        return dict(asdict(self), crop_scale=list(self.crop_scale))


# ------------------------------------------------------------------------------ per image, in whole batches
def _pad_crop(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    # Random crop with zero padding, all images at once: gather shifted row/column windows.
    n, c, h, w = x.shape
    p = aug.crop_pad
    if not p:
        return x
    padded = F.pad(x, (p, p, p, p))
    dy, dx = (torch.randint(0, 2 * p + 1, (2, n), generator=gen)).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # Bilinear resampling of uint8 images through per-image affine maps; the result stays uint8 so that
    # normalisation is shared with unaugmented batches.
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _affine(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    # Small affine distortions of handwriting (Simard et al. 2003), all images at once.
    n, _, h, w = x.shape
    angle, scale, shift = (torch.rand(3, n, generator=gen) * 2 - 1)
    angle, scale = angle * math.radians(10), 1 + 0.1 * scale
    dx, dy = (torch.rand(2, n, generator=gen) * 2 - 1) * (2 * aug.crop_pad / w)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return _warp(x, torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1))


def _resized_crop(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    # RandomResizedCrop's draws (area fraction, log-uniform aspect 3/4..4/3, position), all images at once; a box
    # wider or taller than the image is clipped to it rather than redrawn.
    n = x.shape[0]
    area, log_ratio, px, py = torch.rand(4, n, generator=gen)
    area = aug.crop_scale[0] + (aug.crop_scale[1] - aug.crop_scale[0]) * area
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * log_ratio)
    bw, bh = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # fractions of W and H
    zero = torch.zeros(n)
    tx, ty = (2 * px - 1) * (1 - bw), (2 * py - 1) * (1 - bh)  # box centre in [-1, 1] coordinates
    return _warp(x, torch.stack([torch.stack([bw, zero, tx], 1), torch.stack([zero, bh, ty], 1)], 1))


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


GEOMETRY_OPS = {"none": lambda x, aug, gen: x, "pad-crop": _pad_crop, "resized-crop": _resized_crop,
                "affine": _affine}


def _per_image(x: torch.Tensor, transform: v2.Transform, seed: int) -> torch.Tensor:
    """A torchvision transform image by image (its random parameters differ per image), on the CPU, drawing from
    the global generator reseeded with ``seed`` and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        out = torch.stack([transform(image) for image in x.cpu()])
    return out.to(x.device)


def augment_images(x: torch.Tensor, aug: Augmentation, seed: int) -> torch.Tensor:
    """Geometry, flip and policy of ``aug`` on a uint8 N x C x H x W batch (in-memory data), every draw from
    ``seed`` (cnnzoo.data.mix_seed of seed, epoch, batch, rank)."""
    gen = torch.Generator().manual_seed(seed)
    x = GEOMETRY_OPS[aug.geometry](x, aug, gen)
    if aug.flip:
        x = _flip(x, gen)
    if aug.policy:
        x = _per_image(x, POLICIES[aug.policy](x.shape[-2:]), int(torch.randint(0, 2**62, (1,), generator=gen)))
    return x


# ------------------------------------------------------------------------------------- per image, ImageFolder
class _Fitted:
    """The evaluation geometry (cnnzoo.images.fit_image under the spec) as the first step of a training pipeline:
    PIL image -> uint8 C x H x W tensor."""

    def __init__(self, fit: Callable):
        self.fit = fit

    def __call__(self, image) -> torch.Tensor:
        return torch.tensor(self.fit(image)).permute(2, 0, 1).contiguous()  # a copy: PIL's buffer is read-only


def image_transform(aug: Augmentation, size: Sequence[int], fit: Callable) -> v2.Compose:
    """One PIL image -> uint8 C x H x W tensor, augmented (ImageFolder training). ``fit(image)`` is the evaluation
    geometry (uint8 H x W x C at the input size): pad-crop, affine and policies start from it, so training and
    evaluation see the image framed alike; the resized crop starts from the whole image, as torchvision's does."""
    height, width = size
    steps: list = {
        "none": [_Fitted(fit)],
        "pad-crop": [_Fitted(fit), v2.RandomCrop((height, width), padding=aug.crop_pad)] if aug.crop_pad else
                    [_Fitted(fit)],
        "resized-crop": [v2.ToImage(), v2.RandomResizedCrop((height, width), scale=aug.crop_scale, antialias=True)],
        "affine": [_Fitted(fit), v2.RandomAffine(degrees=10, translate=(aug.crop_pad / width, aug.crop_pad / height),
                                                 scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR)],
    }[aug.geometry]
    if aug.flip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.policy:
        steps.append(POLICIES[aug.policy]((height, width)))
    return v2.Compose([*steps, v2.ToPureTensor()])


# -------------------------------------------------------------------------------------------- per batch
def random_erase(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """RandomErasing of one box per image with probability ``p``, all images at once, on a normalised batch (the
    box is set to 0, the mean colour); a box that does not fit is clipped to the image rather than redrawn."""
    n, _, h, w = x.shape
    u = torch.rand(5, n, generator=gen)
    area = (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[0]) * h * w
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    eh, ew = (area * ratio).sqrt().round().clamp(1, h), (area / ratio).sqrt().round().clamp(1, w)
    top, left = (u[2] * (h - eh + 1)).floor(), (u[3] * (w - ew + 1)).floor()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    mask = inside & (u[4] < p).view(-1, 1, 1)
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


class BatchStage:
    """Random erasing, then mixup or cutmix, on a normalised training batch: (x, labels, seed) -> (x, targets),
    targets being the labels, or N x K class probabilities when mixing is on."""

    def __init__(self, aug: Augmentation, num_classes: int):
        self.erase = aug.erase
        mixes = [cls(alpha=alpha, num_classes=num_classes) for cls, alpha in ((v2.MixUp, aug.mixup),
                                                                              (v2.CutMix, aug.cutmix)) if alpha]
        self.mix = None if not mixes else mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        if self.erase:
            x = random_erase(x, self.erase, gen)
        if self.mix is not None:
            # torchvision draws the mixing weight and the box from the global generator: reseed it, then restore.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
                x, y = self.mix(x, y)
        return x, y
