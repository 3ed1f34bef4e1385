"""Augmentation presets (cnnzoo.augment) through both loaders: shapes, ranges and reproducibility for 1- and
3-channel data, the "none" preset equal to evaluation's preprocessing, erasing and mixing, the defaults each kind
of data proposes, and the acceptance case of issue #11: LeNet-5 with default settings on the scikit-learn digits
saved as an ImageFolder of 8x8 PNG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.augment import PRESETS, Augmentation, BatchStage, augment_images, random_erase
from cnnzoo.data import FolderSplit, TensorSplit, load_data
from cnnzoo.images import open_image, preprocess
from cnnzoo.train import TrainConfig, fit


def _aug(preset: str, data, **options) -> Augmentation:
    d = dict(data.aug_defaults, flip=True)
    d.update(options)
    return Augmentation.build(preset, data.aug_defaults["aug"], flip=d["flip"], crop_pad=d["crop_pad"],
                              crop_scale=d["crop_scale"], erase=d.get("erase", 0.0), mixup=d.get("mixup", 0.0),
                              cutmix=d.get("cutmix", 0.0))


def _photos(root, channels: int, n: int = 4) -> None:
    """Two classes of photo-like images of mixed sizes (so the folder is not held in memory)."""
    rng = np.random.default_rng(channels)
    for part in ("train", "val"):
        for label in range(2):
            folder = root / part / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(70, 110, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert("L" if channels == 1 else "RGB").save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(in-memory, ImageFolder-through-workers) data at 1 and 3 channels, 32 x 32 inputs."""
    out = {}
    for channels in (1, 3):
        root = tmp_path_factory.mktemp(f"photos{channels}")
        _photos(root, channels)
        out[channels] = (load_data("fake", input_size=(channels, 32, 32), num_classes=2, fake_samples=8),
                         load_data("imagefolder", root, input_size=(channels, 32, 32)))
    return out


def _unnormalised(x: torch.Tensor, spec) -> torch.Tensor:
    return x * torch.tensor(spec.std).view(1, -1, 1, 1) + torch.tensor(spec.mean).view(1, -1, 1, 1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_in_both_loaders_gives_images_of_the_input_in_range(preset, channels, datasets):
    for data in datasets[channels]:
        assert isinstance(data.train, TensorSplit if data.name == "fake" else FolderSplit)
        aug = _aug(preset, data)
        loader = data.loader("train", 4, train=True, seed=1, workers=0, augment=aug)
        x, y, idx = next(iter(loader))
        again = next(iter(data.loader("train", 4, train=True, seed=1, workers=0, augment=aug)))[0]
        assert x.shape == (4, channels, 32, 32) and x.dtype == torch.float32 and torch.equal(y, data.train.labels[idx])
        pixels = _unnormalised(x, data.spec)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, (preset, data.name)
        assert torch.equal(x, again)  # a function of (seed, epoch, batch): exact resume depends on it
        if preset != "none":
            other = next(iter(data.loader("train", 4, train=True, seed=2, workers=0, augment=aug)))
            same_images = data.loader("train", 4, train=True, seed=2, workers=0, augment=_aug("none", data,
                                                                                               flip=False))
            plain = next(iter(same_images))[0]
            assert not torch.equal(other[0], plain), (preset, data.name)  # it changed the images


def test_none_is_exactly_the_evaluation_transform(datasets):
    for data in datasets[3]:
        none = _aug("none", data, flip=False)
        x, _, idx = next(iter(data.loader("train", 4, train=True, seed=0, workers=0, augment=none)))
        if data.name == "fake":
            val = data.loader("train", 8, train=False, workers=0)
            expected = next(iter(val))[0][idx]
        else:  # the one preprocessing of predict and serve, on the files themselves
            paths = [data.train.samples[i][0] for i in idx.tolist()]
            expected = torch.from_numpy(np.stack([preprocess(open_image(p), data.spec) for p in paths]))
        assert torch.equal(x, expected)


def test_augment_images_keeps_dtype_and_draws_per_image():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    for preset in ("crop-flip", "imagenet", "affine", "randaugment"):
        aug = Augmentation.build(preset, "crop-flip", flip=True, crop_pad=4, crop_scale=(0.35, 1))
        out = augment_images(x, aug, seed=7)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        assert torch.equal(out, augment_images(x, aug, seed=7))
        changed = (out != x).flatten(1).any(1)
        assert changed.sum() > 8, preset  # random per image, not one draw for the whole batch


def test_policy_presets_take_the_data_s_own_geometry():
    digits = Augmentation.build("autoaugment", "affine", flip=False, crop_pad=3, crop_scale=(0.35, 1))
    photos = Augmentation.build("randaugment", "imagenet", flip=True, crop_pad=28, crop_scale=(0.08, 1))
    assert (digits.geometry, digits.policy) == ("affine", "autoaugment")
    assert (photos.geometry, photos.policy) == ("resized-crop", "randaugment")
    assert digits.describe() == "autoaugment (affine, shift 3, no flip)"
    from cnnzoo.errors import UserError

    with pytest.raises(UserError, match="unknown augmentation 'flips'"):
        Augmentation.build("flips", "affine", flip=False, crop_pad=3, crop_scale=(0.35, 1))
    with pytest.raises(UserError, match="LOW <= HIGH"):
        Augmentation.build("imagenet", "affine", flip=False, crop_pad=3, crop_scale=(0.5, 0.2))


def test_mixup_and_cutmix_targets_are_distributions():
    x, y = torch.randn(32, 3, 16, 16), torch.arange(32) % 10
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        stage = BatchStage(Augmentation(mixup=mixup, cutmix=cutmix), num_classes=10)
        mixed, target = stage(x, y, seed=3)
        assert mixed.shape == x.shape and target.shape == (32, 10) and (target >= 0).all()
        torch.testing.assert_close(target.sum(1), torch.ones(32, dtype=target.dtype))
        # torchvision mixes each image with its neighbour in the batch (roll by one): the weight is on those two.
        support = torch.zeros_like(target, dtype=torch.bool)
        support[torch.arange(32), y] = support[torch.arange(32), y.roll(1)] = True
        assert (target[~support] == 0).all()
        again_x, again_t = stage(x, y, seed=3)
        assert torch.equal(mixed, again_x) and torch.equal(target, again_t)
    rng_before = torch.get_rng_state()
    BatchStage(Augmentation(mixup=0.2), 10)(x, y, seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global generator is left alone


def test_random_erasing_boxes():
    x = torch.ones(64, 3, 20, 20)
    erased = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    for image in erased:
        zero = image[0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and (image == 0).all(0).equal(zero)  # one rectangle, every channel
        assert 1 <= zero.sum() <= 0.33 * 400 + 40  # 2-33 % of the area (rounded, clipped to the image)
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(0)), x)


def _digit_folder(root, data, per_class: int | None = None) -> None:
    """The digits as 8x8 grey PNG files in class folders (``per_class``: only the first few of each class)."""
    for part, split in (("train", data.train), ("val", data.val)):
        for i, (image, label) in enumerate(zip(split.images.numpy(), split.labels.tolist())):
            folder = root / part / str(label)
            if per_class is None or sum(1 for _ in folder.glob("*.png")) < per_class:
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[0]).save(folder / f"{i:04d}.png")


def test_folder_defaults_follow_the_images(tmp_path):
    _digit_folder(tmp_path / "grey", load_data("digits"), per_class=3)
    grey = load_data("imagefolder", tmp_path / "grey", default_input_size=(3, 32, 32))
    # 8x8 grey scans: held in memory, stretched whole, pad-crop without flips (a mirrored digit is no digit).
    assert isinstance(grey.train, TensorSplit) and grey.spec.resize == "stretch"
    assert grey.aug_defaults == dict(aug="crop-flip", flip=False, crop_pad=4, crop_scale=(0.35, 1.0))
    assert grey.train.name(0).endswith(".png")
    _photos(tmp_path / "photos", 3)
    photos = load_data("imagefolder", tmp_path / "photos", default_input_size=(3, 64, 64))
    assert isinstance(photos.train, FolderSplit) and photos.spec.resize == "crop"
    assert photos.aug_defaults == dict(aug="imagenet", flip=True, crop_pad=8, crop_scale=(0.35, 1.0))
    assert load_data("digits").aug_defaults["aug"] == "affine"


def test_lenet5_defaults_on_the_digits_as_png_files(tmp_path):
    """Issue #11's acceptance: LeNet-5 with its default recipe (60 epochs) on the digits saved as 8x8 PNG files
    reaches the built-in loader's level. To keep the test cheap the run stops (resumably) after 8 of the 60
    epochs, by when it reached 0.969 (0.958 at epoch 7; before this change the folder run stayed at 0.30 over
    15 epochs); the bar is 0.95. The full run ends at 0.99 and above."""
    _digit_folder(tmp_path / "png", load_data("digits"))
    data = load_data("imagefolder", tmp_path / "png", default_input_size=(1, 32, 32))
    history = fit("lenet5", data, TrainConfig(max_steps=8 * 45, progress=False, out=str(tmp_path / "run")))
    assert len(history.epochs) == 8 and history.interrupted  # 1437 images: 45 steps of 32 an epoch
    assert max(e["val_top1"] for e in history.epochs) >= 0.95, [e["val_top1"] for e in history.epochs]


def test_cli_presets_are_the_library_s():
    from cnnzoo.cli import train as cli_train

    assert list(cli_train.AUG_PRESETS) == list(PRESETS)
    assert all(cli_train.AUG_PRESETS[k] == p.help for k, p in PRESETS.items())
